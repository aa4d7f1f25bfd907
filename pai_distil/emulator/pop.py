"""What every POP API of the emulator shares (DLC, DSW, EAS): signed requests, request ids, the
JSON error body the tea-openapi clients parse (`Code`, `Message`, `RequestId`, `HostId`).

A service builds its routes on `pop_router()`; every route then requires a valid signature and
any `PopError` it raises becomes the service's error response.
"""

from __future__ import annotations

import hashlib
import uuid

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from .auth import BODY_MISMATCH, AuthError, SignedRequest, verify_pop

MAX_BODY = 1 << 20  # POP APIs take JSON of kilobytes (DLC's CreateJob at most 64 KiB)


class PopError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def stored(store, key: str, prefix: str, code: str, message: str) -> dict:
    """The resource `key` in `store`, or PAI's 404 (`code`, `message`) for an unknown or malformed id."""
    doc = store.get(key) if key.startswith(prefix) else None
    if doc is None:
        raise PopError(404, code, message)
    return doc


def paging(query, size: int) -> tuple[int, int]:
    """(PageNumber, PageSize) of a List call, each a positive integer (`size` when not given), else a 400:
    page 0 or -1 would slice the list from its end."""
    try:
        page, size = int(query.get("PageNumber") or 1), int(query.get("PageSize") or size)
    except ValueError:
        raise PopError(400, "InvalidParameter", "PageNumber and PageSize must be integers") from None
    if page < 1 or size < 1:
        raise PopError(400, "InvalidParameter", "PageNumber and PageSize must be 1 or more")
    return page, size


def request_id() -> str:
    return str(uuid.uuid4()).upper()


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, refused (413) past `limit` bytes by its Content-Length or as it arrives."""
    length = request.headers.get("content-length", "")
    too_big = PopError(413, "RequestEntityTooLarge", f"the request body is over {limit} bytes")
    if length and (not length.isdigit() or int(length) > limit):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    request._body = b"".join(chunks)  # where Starlette's Request.body() keeps it, for the route to read
    return request._body


async def require_signature(request: Request) -> str:
    """FastAPI dependency: the AccessKey id that signed the request, or a POP auth error.

    Why the signature before the body: an unsigned client must not make the emulator hold its body.
    An ACS3 request signs x-acs-content-sha256, so its headers are checked first and the body, read
    within MAX_BODY only once they verify, must then match that hash.
    """
    emulator = request.app.state.emulator
    claimed = request.headers.get("x-acs-content-sha256")
    signed = SignedRequest(method=request.method, path=request.url.path, query=list(request.query_params.multi_items()),
                           headers={k.lower(): v for k, v in request.headers.items()},
                           body=None if claimed else await read_body(request))
    try:
        ak = verify_pop(signed, emulator.keys, emulator.nonces)
    except AuthError as e:
        status = 404 if e.code == "InvalidAccessKeyId" else 400
        code = "InvalidAccessKeyId.NotFound" if e.code == "InvalidAccessKeyId" else e.code
        raise PopError(status, code, e.message) from None
    if claimed and hashlib.sha256(await read_body(request)).hexdigest() != claimed:
        raise PopError(400, "SignatureDoesNotMatch", BODY_MISMATCH)
    request.state.access_key_id = ak
    return ak


def pop_router(**kwargs) -> APIRouter:
    """An APIRouter whose every route checks the request's signature."""
    return APIRouter(dependencies=[Depends(require_signature)], **kwargs)


async def _render(request: Request, exc: PopError) -> JSONResponse:
    host = request.headers.get("host", "127.0.0.1")
    return JSONResponse({"RequestId": request_id(), "HostId": host, "Code": exc.code, "Message": exc.message,
                         "Recommend": f"https://api.aliyun.com/troubleshoot?q={exc.code}"}, status_code=exc.status)


def install(app: FastAPI) -> None:
    app.add_exception_handler(PopError, _render)


def body_json(raw: bytes) -> dict:
    import json

    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise PopError(400, "InvalidParameter", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise PopError(400, "InvalidParameter", "the body must be a JSON object")
    return data
