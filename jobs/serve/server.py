"""The OpenAI-compatible server of a checkpoint: `python -m pai_distil_jobs.serve CHECKPOINT`.

What `pai-distil deploy local` runs, as a process or as the command of the CPU serving image,
and what the EAS emulator runs for each service. The API is the subset of vLLM's that clients
of a reasoning model use: `/v1/models`, `/v1/chat/completions` (streaming or not, `n`, `stop`,
`seed`, `logprobs` / `top_logprobs`, `chat_template_kwargs` or DashScope's top-level
`enable_thinking`, reasoning returned in `reasoning_content` as vLLM's reasoning parser does),
`/v1/completions` (text prompts) and `/health`; any other request field is a 400 naming it.
`enable_thinking: false` on a template without a thinking switch is applied as `/no_think`
where the checkpoint was trained with it, else refused (see `Engine.switch_thinking`). The token
comes from the environment (PAI_DISTIL_SERVE_TOKEN), never from the command line, so it does not
show in process lists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pai_distil.core.artifacts import artifact_name
from pai_distil.core.http_limits import limit_bodies
from pai_distil.core.protocol import (UNAUTHORIZED, BadRequest, Sampling, authorized, error_body, parse_chat,
                                      parse_completion)

TOKEN_ENV = "PAI_DISTIL_SERVE_TOKEN"
THINKING_SWITCH_HEADER = "x-pai-distil-thinking-switch"  # set when enable_thinking false became /no_think
THINKING_SWITCHES = {
    "template": "enable_thinking false: the chat template's own switch",
    "soft": "enable_thinking false: the chat template has no switch; /no_think is added to the last user turn, "
            "as this checkpoint was trained (the reply carries the x-pai-distil-thinking-switch header)",
    None: "enable_thinking false: refused with a 400; the chat template has no thinking switch and the checkpoint "
          "was not trained with /no_think",
}


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
    from pai_distil_jobs.serve.responses import ChatFormat, Reply, TextFormat, collect, stream

    app = FastAPI(title="pai-distil model server", docs_url=None, redoc_url=None, openapi_url=None)
    limit_bodies(app)
    created = int(time.time())

    def denied(request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), token):
            return None
        return JSONResponse(UNAUTHORIZED, status_code=401)

    def check_model(model: str) -> None:
        if model != served_name:
            raise _NotFound(f"The model '{model}' does not exist; this server serves '{served_name}'.")

    def budget(prompt_ids: list[int], max_tokens: int | None) -> int:
        wanted = max_tokens or engine.default_budget(len(prompt_ids))
        engine.check_budget(len(prompt_ids), wanted)
        return wanted

    async def answer(jobs, queue, reply: Reply, s: Sampling, headers: dict | None = None):
        if s.stream:
            return StreamingResponse(stream(jobs, queue, reply, s.include_usage), media_type="text/event-stream",
                                     headers=headers)
        body = await collect(jobs, queue, reply)
        if isinstance(body, str):
            return _error(500, body, "server_error")
        return JSONResponse(body, headers=headers)

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
            req = parse_chat(await _body(request))
            check_model(req.model)
            messages, kwargs, switch = engine.switch_thinking(req.messages, req.template_kwargs)
            prompt_ids, in_thought = engine.render(messages, kwargs)
            jobs, queue = engine.start([prompt_ids], [budget(prompt_ids, req.max_tokens)], req,
                                       req.top_logprobs if req.logprobs else None)
        except _NotFound as e:
            return _error(404, str(e), code="model_not_found", param="model")
        except BadRequest as e:
            return _error(400, e.message, param=e.param)
        fmt = ChatFormat(len(jobs), in_thought, reasoning_parser, req.logprobs)
        headers = {THINKING_SWITCH_HEADER: switch} if switch else None
        return await answer(jobs, queue, Reply(fmt, served_name, system_fingerprint, len(prompt_ids)), req, headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        if no := denied(request):
            return no
        try:
            req = parse_completion(await _body(request))
            check_model(req.model)
            prompts = [engine.encode(p) for p in req.prompts]
            jobs, queue = engine.start(prompts, [budget(p, req.sampling.max_tokens) for p in prompts], req.sampling,
                                       req.logprobs)
        except _NotFound as e:
            return _error(404, str(e), code="model_not_found", param="model")
        except BadRequest as e:
            return _error(400, e.message, param=e.param)
        reply = Reply(TextFormat(req.logprobs is not None), served_name, system_fingerprint, sum(map(len, prompts)))
        return await answer(jobs, queue, reply, req.sampling)

    return app


class _NotFound(Exception):
    """A model this server does not serve: 404."""


async def _body(request: Request):
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None


def default_served_name(checkpoint: str | Path) -> str:
    """The name a checkpoint is served as when none is given: the run that wrote it, else its folder's."""
    return artifact_name(checkpoint)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pai_distil_jobs.serve",
                                 description=f"Serve a checkpoint with the OpenAI API; the token is read from ${TOKEN_ENV}.")
    ap.add_argument("checkpoint")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None,
                    help="default: the id of the run that wrote the checkpoint, else the checkpoint folder's name")
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

    name = args.served_model_name or default_served_name(args.checkpoint)
    try:
        engine = Engine(args.checkpoint, max_batch=args.max_batch, threads=args.threads)
    except Exception as e:  # broad: transformers, tokenizers and safetensors each raise their own on a damaged checkpoint
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: cannot load the checkpoint {args.checkpoint}: {reason}; copy or train it again", file=sys.stderr)
        return 2
    app = create_app(engine, name, token, fingerprint(args.checkpoint), not args.no_reasoning_parser)
    print(f"pai-distil serve: model '{name}' at http://{args.host}:{args.port}/v1", flush=True)
    print(f"pai-distil serve: {THINKING_SWITCHES[engine.thinking_switch]}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60)
    return 0

