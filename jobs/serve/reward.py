"""The reward model behind HTTP: `POST /v1/score` scores a batch of (prompt, completion) items.

Request: {"items": [{"prompt": "...", "completion": "..."}, ...]}; response: {"scores": [...],
"model": NAME}, scores standardised as in-process (`RewardScorer`). Every request needs
`Authorization: Bearer KEY` (or the bare key, as EAS's gateway accepts and forwards it) when a
key is set; a malformed body is answered 400 (or 413 for too
many items) with a message saying what is wrong, and a failure while scoring is a 500 with a
message: the server keeps serving. The same API runs as a PAI-EAS service while GRPO trains.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from pai_distil.core.http_limits import limit_bodies
from pai_distil.core.protocol import authorized, error_body

DEFAULT_MAX_ITEMS = 256


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status)


def parse_items(body, max_items: int) -> tuple[list[str], list[str]]:
    """(prompts, completions) of a request body, or ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object with 'items'")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise ValueError("'items' is required: a non-empty list of {\"prompt\", \"completion\"} objects")
    if len(items) > max_items:
        raise OverflowError(f"{len(items)} items in one request; send at most {max_items}")
    prompts, completions = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("completion"), str):
            raise ValueError(f"items[{i}] must be an object with string 'prompt' and 'completion'")
        prompts.append(item["prompt"])
        completions.append(item["completion"])
    return prompts, completions


def create_app(scorer, api_key: str | None, name: str = "reward", max_items: int = DEFAULT_MAX_ITEMS) -> FastAPI:
    """`scorer(prompts, completions) -> scores`; api_key None serves without authentication."""
    app = FastAPI(title="pai-distil reward model", docs_url=None, redoc_url=None)
    limit_bodies(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name}

    @app.post("/v1/score")
    async def score(request: Request):
        if not authorized(request.headers.get("authorization"), api_key):
            return _error(401, "Incorrect or missing API key; send it as 'Authorization: Bearer KEY'.",
                          code="invalid_api_key")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        try:
            prompts, completions = parse_items(body, max_items)
        except OverflowError as e:
            return _error(413, str(e))
        except ValueError as e:
            return _error(400, str(e))
        try:
            scores = await run_in_threadpool(scorer, prompts, completions)
        except Exception as e:  # noqa: BLE001 - one bad batch must not take the service down
            return _error(500, f"scoring failed: {type(e).__name__}: {str(e)[:200]}", "server_error")
        return {"scores": scores, "model": name}

    return app


def serve(checkpoint: Path, host: str, port: int, api_key: str | None, max_items: int = DEFAULT_MAX_ITEMS,
          on_ready=None) -> None:
    """Load the reward model and serve it until interrupted."""
    import uvicorn

    from pai_distil_jobs.train.reward import RewardScorer

    scorer = RewardScorer(checkpoint)
    if on_ready:
        on_ready()
    uvicorn.run(create_app(scorer.score, api_key, name=Path(checkpoint).name, max_items=max_items),
                host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    """`python -m pai_distil_jobs.serve.reward CHECKPOINT`: what `pai-distil reward serve` runs once it has
    checked its arguments."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog="pai-distil reward serve")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS)
    parser.add_argument("--api-key-env", default="PAI_DISTIL_REWARD_API_KEY")
    parser.add_argument("--no-auth", action="store_true")
    args = parser.parse_args(argv)
    api_key = None if args.no_auth else os.environ.get(args.api_key_env)
    if not args.no_auth and not api_key:
        print(f"error: environment variable {args.api_key_env} is not set; set it to the API key clients must send, "
              "or pass --no-auth to serve without one", file=sys.stderr)
        return 2
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    auth = "no API key" if args.no_auth else f"API key from ${args.api_key_env}"

    def ready() -> None:
        print(f"reward model {args.checkpoint} serving at http://{url_host}:{args.port}/v1/score ({auth}); "
              "Ctrl-C stops it", flush=True)

    try:
        serve(args.checkpoint, args.host, args.port, api_key, max_items=args.max_items, on_ready=ready)
    except ImportError as e:
        print(f"error: serving a reward model needs the training extras ({e.name} is missing); install them with "
              "`pip install 'pai-distil[train]'`", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
