"""Request limits shared by the three HTTP servers (synthetic teacher, reward model, model server).

Why one ASGI middleware in front of the apps rather than checks in each handler: a body is
bounded before it is held in memory (413), and a JSON body too deep for the parser's recursion,
or carrying a lone surrogate that no UTF-8 encoder accepts, is answered 400 before any handler
parses it, so no handler can fail on it with a 500. Example: `limit_bodies(app)`, which reads the
limit from the environment as the app is built (a bad value stops the server as it starts, not
each request once Starlette builds its middleware).
"""

from __future__ import annotations

import json

from pai_distil.core.env_numbers import MAX_BODY_MB, env_number
from pai_distil.core.protocol import error_body

DEFAULT_MAX_MB = 32.0  # a reward batch of 256 long chains fits; a body that fills the memory does not
MAX_DEPTH = 64  # chat requests nest 4-6 deep


NO_CONSTANT = "not a JSON number"


def _no_constant(name: str):
    """Python's json reads NaN and Infinity; a temperature of NaN would reach the sampler."""
    raise ValueError(f"{name} is {NO_CONSTANT}")


def json_problem(body: bytes, max_depth: int = MAX_DEPTH) -> str | None:
    """Why `body` is not acceptable JSON (bad UTF-8 or syntax, too deep, a lone surrogate), or None."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        return "request body is not UTF-8 text"
    except RecursionError:
        return f"request body nests deeper than {max_depth} levels"
    except ValueError as e:  # a syntax error, or an integer longer than Python converts (sys.get_int_max_str_digits)
        if NO_CONSTANT in str(e):
            return "request body holds NaN or Infinity, which JSON has no place for; send a finite number"
        return "request body holds a number of thousands of digits" if "digits" in str(e) else \
            "request body is not valid JSON"
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return f"request body nests deeper than {max_depth} levels"
        if isinstance(node, dict):
            stack += [(k, depth) for k in node] + [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return "request body holds a lone surrogate (\\ud800-\\udfff without its pair)"
    return None


def max_body_bytes() -> int:
    """The largest body accepted: ${PAI_DISTIL_MAX_BODY_MB} MiB, else 32 (UserError on a bad value)."""
    return int(env_number(MAX_BODY_MB, DEFAULT_MAX_MB) * 2**20)


def limit_bodies(app) -> None:
    """Put BodyLimits in front of a Starlette / FastAPI `app`, with the limit read now."""
    app.add_middleware(BodyLimits, max_bytes=max_body_bytes())


class BodyLimits:
    """ASGI middleware: a body over `max_bytes` is answered 413, a bad JSON body 400.

    Args:
        app: the ASGI app behind it.
        max_bytes (int, optional): the largest body accepted. Defaults to ${PAI_DISTIL_MAX_BODY_MB} MiB, else 32.
        max_depth (int, optional): how deep a JSON body may nest. Defaults to 64.
    """

    def __init__(self, app, max_bytes: int | None = None, max_depth: int = MAX_DEPTH):
        self.app = app
        self.max_bytes = max_bytes or max_body_bytes()
        self.max_depth = max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = f"request body is over {self.max_bytes} bytes; send less at a time"
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _answer(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _answer(send, 413, too_big)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body and (problem := json_problem(body, self.max_depth)):
            return await _answer(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _answer(send, status: int, message: str) -> None:
    payload = json.dumps(error_body(message, "invalid_request_error", None)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
