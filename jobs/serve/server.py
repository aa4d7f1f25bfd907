"""The OpenAI-compatible server of a checkpoint: `python -m pai_distil_jobs.serve CHECKPOINT`.

What `pai-distil deploy local` runs, as a process or as the command of the CPU serving image,
and what the EAS emulator runs for each service. The API is the subset of vLLM's that clients
of a reasoning model use: `/v1/models`, `/v1/chat/completions` (streaming or not, with
`chat_template_kwargs` such as `enable_thinking`, reasoning returned in `reasoning_content`
as vLLM's reasoning parser does) and `/health`. The token comes from the environment
(PAI_DISTIL_SERVE_TOKEN), never from the command line, so it does not show in process lists.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pai_distil.core.protocol import UNAUTHORIZED, BadRequest, ThinkSplitter, authorized, error_body, parse_chat
from pai_distil.core.http_limits import BodyLimits

TOKEN_ENV = "PAI_DISTIL_SERVE_TOKEN"


def fingerprint(checkpoint: str | Path) -> str:
    """A short id of the checkpoint's content (its manifest, else its config and weight files' sizes).

    Returned as `system_fingerprint`, so a client sees which checkpoint answered (rolling updates).
    """
    root = Path(checkpoint)
    digest = hashlib.sha256()
    manifest = root / "manifest.json"
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    else:
        for p in sorted(root.iterdir()):
            if p.is_file():
                digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
                if p.suffix == ".json":
                    digest.update(p.read_bytes())
    return "fp_" + digest.hexdigest()[:12]


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status)


def create_app(engine, served_name: str, token: str | None, system_fingerprint: str,
               reasoning_parser: bool = True) -> FastAPI:
    """The API over `engine` (pai_distil_jobs.serve.chat.Engine); `token` None serves without auth."""
    from pai_distil_jobs.serve.chat import Job

    app = FastAPI(title="pai-distil model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimits)
    created = int(time.time())

    def denied(request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), token):
            return None
        return JSONResponse(UNAUTHORIZED, status_code=401)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served_name, "system_fingerprint": system_fingerprint}

    @app.get("/v1/models")
    async def models(request: Request):
        if no := denied(request):
            return no
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": created,
                                            "owned_by": "pai-distil", "max_model_len": engine.context}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if no := denied(request):
            return no
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        try:
            req = parse_chat(body)
            if req.model != served_name:
                return _error(404, f"The model '{req.model}' does not exist; this server serves '{served_name}'.",
                              code="model_not_found", param="model")
            prompt_ids, in_thought = engine.render(req.messages, req.template_kwargs)
            budget = req.max_tokens or engine.default_budget(len(prompt_ids))
            engine.check_budget(len(prompt_ids), budget)
        except BadRequest as e:
            return _error(400, e.message, param=e.param)
        job = Job(prompt_ids, budget, req.temperature, req.top_p, asyncio.get_running_loop(), asyncio.Queue())
        engine.submit(job)
        cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        splitter = ThinkSplitter(in_thought) if reasoning_parser else None

        def pieces(text: str | None) -> list[tuple[str, str]]:
            if splitter is None:
                return [("content", text)] if text else []
            return splitter.feed(text) if text is not None else splitter.flush()

        if req.stream:
            return StreamingResponse(_stream(job, pieces, cid, now, served_name, system_fingerprint,
                                             req.include_usage), media_type="text/event-stream")
        fields: dict[str, str] = {}
        try:
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    for f, t in pieces(event[1]):
                        fields[f] = fields.get(f, "") + t
                    continue
                if event[0] == "error":
                    return _error(500, event[1], "server_error")
                break
        finally:
            job.cancelled = True
        for f, t in pieces(None):
            fields[f] = fields.get(f, "") + t
        _, finish, n_prompt, n_out = event
        message = {"role": "assistant", "content": fields.get("content", "")}
        if "reasoning_content" in fields or (splitter is not None and splitter.started):
            message["reasoning_content"] = fields.get("reasoning_content", "").strip()
        return {"id": cid, "object": "chat.completion", "created": now, "model": served_name,
                "system_fingerprint": system_fingerprint,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}

    return app


async def _stream(job, pieces, cid: str, created: int, model: str, fp: str, include_usage: bool):
    """OpenAI streaming chunks: the role, then one chunk per piece of text, then the finish (and usage)."""

    def chunk(delta: dict | None, finish: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": fp, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if event[0] == "text":
                for f, t in pieces(event[1]):
                    yield chunk({f: t})
                continue
            if event[0] == "error":
                yield f"data: {json.dumps(error_body(event[1], 'server_error'))}\n\n"
                return
            break
        for f, t in pieces(None):
            yield chunk({f: t})
        _, finish, n_prompt, n_out = event
        yield chunk({}, finish)
        if include_usage:
            yield chunk(None, usage={"prompt_tokens": n_prompt, "completion_tokens": n_out,
                                     "total_tokens": n_prompt + n_out})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # a client that went away stops counting in its batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pai_distil_jobs.serve",
                                 description=f"Serve a checkpoint with the OpenAI API; the token is read from ${TOKEN_ENV}.")
    ap.add_argument("checkpoint")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None, help="default: the checkpoint folder's name")
    ap.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-auth", action="store_true", help=f"serve without a token even when ${TOKEN_ENV} is set")
    ap.add_argument("--no-reasoning-parser", action="store_true", help="return <think>…</think> inline in content")
    args = ap.parse_args(argv)
    token = None if args.no_auth else (os.environ.get(TOKEN_ENV) or None)
    if token is None and not args.no_auth:
        print(f"pai-distil serve: set ${TOKEN_ENV} to the token clients must send, or pass --no-auth", file=sys.stderr)
        return 2

    import uvicorn

    from pai_distil_jobs.serve.chat import Engine

    name = args.served_model_name or Path(args.checkpoint).resolve().name
    engine = Engine(args.checkpoint, max_batch=args.max_batch, threads=args.threads)
    app = create_app(engine, name, token, fingerprint(args.checkpoint), not args.no_reasoning_parser)
    print(f"pai-distil serve: model '{name}' at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60)
    return 0

