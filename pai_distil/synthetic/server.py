"""The synthetic teacher as an OpenAI-compatible HTTP service.

`generate` talks to this server with the same client code it uses for a real teacher (vLLM on
PAI-EAS, DashScope, any OpenAI-compatible endpoint), so tests and demos exercise the real path:
authentication, retries, concurrency, parsing. The user message is read as a synthetic-world
problem, the verbosity (RV 0-9) comes from the system message, and the oracle writes the answer.

FastAPI and uvicorn are imported here only; the CLI imports this module lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pai_distil.core.protocol import BadRequest, error_body, parse_chat
from pai_distil.core.http_limits import limit_bodies
from pai_distil.core.judging import which_dimension
from pai_distil.synthetic import judge
from pai_distil.core import oracle as teacher, world
from pai_distil.core.think import split_thought, think_block

MODELS = ("oracle", "oracle-noisy", "judge")
LOGITS_NAME = "teacher"  # the model name /v1/completions serves a --logits-model checkpoint under
NOISY_DEFAULT_ERROR_RATE = 0.1
_VERBOSITY_RE = re.compile(r"verbosity(?: level)?\s*[:=]?\s*(\d)", re.IGNORECASE)
_WORD_RE = re.compile(r"\S+")
CANNOT_SOLVE = (
    "I can only solve problems of the synthetic reasoning world, such as "
    "\"Start with 7. Add 5, then multiply by 3. Work modulo 10. What is the result?\". "
    "I could not find one in your message."
)


@dataclass
class Stats:
    """Request counters, read by tests to check that clients resume, retry and stop asking."""

    requests: int = 0  # chat completion requests received, failed ones included
    failures: int = 0  # requests answered with an injected 500 / 429
    completions: int = 0  # completions returned


def _error(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None,
           param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def count_tokens(text: str) -> int:
    """Whitespace-separated words: the synthetic world has no tokenizer; good enough for usage."""
    return len(_WORD_RE.findall(text or ""))


def fit_words(parts: list[str], limit: int | None) -> tuple[list[str], bool]:
    """`parts` cut so that together they hold at most `limit` words (layout kept); and whether cut."""
    if limit is None:
        return parts, False
    out, cut = [], False
    for text in parts:
        words = list(_WORD_RE.finditer(text))
        if len(words) > limit:
            text, cut = (text[: words[limit - 1].end()] if limit > 0 else ""), True
        limit = max(0, limit - len(words))
        out.append(text)
    return out, cut


def read_verbosity(system: str) -> int:
    m = _VERBOSITY_RE.search(system or "")
    return int(m.group(1)) if m else teacher.DEFAULT_RV


def _rng(seed: int, text: str, rv: int) -> random.Random:
    """Same (seed, problem, verbosity) -> same answer, whatever the order of requests."""
    digest = hashlib.sha256(f"{seed}\x00{rv}\x00{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def create_app(api_key: str | None, error_rate: float = 0.0, seed: int = 0, fail_rate: float = 0.0,
               reasoning_content: bool = False, logits_model: str | None = None,
               logits_name: str = LOGITS_NAME) -> FastAPI:
    """The synthetic teacher service.

    api_key: the Bearer key clients must send; None serves without authentication.
    error_rate: how often "oracle-noisy" slips on a step (0 means the default of 0.1); "oracle"
        never errs.
    fail_rate: this fraction of chat requests, evenly spread, answers 500 or 429 (alternately),
        to exercise client retries.
    reasoning_content: put the chain of thought in `message.reasoning_content` (as vLLM's
        reasoning parser and DeepSeek do) instead of inline `<think>…</think>`.
    logits_model: a checkpoint (or preset) that answers `/v1/completions` as vLLM does, with prompt
        logprobs (`echo`, `logprobs`, `return_tokens_as_token_ids`), served as model `logits_name`;
        without one, completions come back without logprobs, like a server that ignores them.
    """
    app = FastAPI(title="pai-distil synthetic teacher", docs_url=None, redoc_url=None)
    limit_bodies(app)
    stats = Stats()
    app.state.stats = stats
    noisy_rate = error_rate or NOISY_DEFAULT_ERROR_RATE
    created = int(time.time())

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip() == api_key:
            return None
        return _error(401, "Incorrect or missing API key; send it as 'Authorization: Bearer KEY'.",
                      "invalid_request_error", "invalid_api_key")

    def injected_failure() -> JSONResponse | None:
        # Request k fails when floor(k * rate) steps up: exactly `fail_rate` of requests, evenly spread.
        k = stats.requests
        if fail_rate <= 0 or int(k * fail_rate) == int((k - 1) * fail_rate):
            return None
        stats.failures += 1
        headers = {"retry-after-ms": "20"}  # keep client backoff short in tests
        if stats.failures % 2:
            return _error(500, "injected failure (fail_rate)", "server_error", headers=headers)
        return _error(429, "injected rate limit (fail_rate)", "rate_limit_error", "rate_limit_exceeded", headers)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        if denied := unauthorized(request):
            return denied
        return {"object": "list",
                "data": [{"id": m, "object": "model", "created": created, "owned_by": "pai-distil"} for m in MODELS]}

    def compose(model: str, messages: list[tuple[str, str]], max_tokens: int | None) -> tuple[dict, str, dict]:
        """(message, finish reason, usage) of the oracle's or the judge's answer to `messages`."""
        system = "\n".join(text for role, text in messages if role == "system")  # developer is read as system
        user = [text for role, text in messages if role == "user"][-1]
        rv = read_verbosity(system)
        problem = world.parse_problem(user)
        dimension = which_dimension(system)
        if dimension is not None:  # a rubric question of the score stage
            score = judge.score(dimension, user)
            thought, answer = "", (CANNOT_SOLVE if score is None else f"Having read it carefully: Score: {score}")
            problem = None
        elif problem is None:
            thought, answer = "", CANNOT_SOLVE
        else:
            rate = noisy_rate if model == "oracle-noisy" else 0.0
            thought, answer = split_thought(teacher.respond(problem, rv, _rng(seed, user, rv), rate))

        # max_tokens bounds reasoning and answer together, as with real reasoning models.
        if reasoning_content and problem is not None:
            (thought, answer), cut = fit_words([thought, answer], max_tokens)
            message = {"role": "assistant", "content": answer, "reasoning_content": thought}
        else:
            full = think_block(thought, answer) if problem is not None else answer
            (content,), cut = fit_words([full], max_tokens)
            message = {"role": "assistant", "content": content}
        usage = {"prompt_tokens": sum(count_tokens(t) for _, t in messages),
                 "completion_tokens": count_tokens(message["content"]) + count_tokens(message.get("reasoning_content", ""))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return message, "length" if cut else "stop", usage

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if denied := unauthorized(request):
            return denied
        stats.requests += 1
        if failed := injected_failure():
            return failed
        # Parsing and answering run off the event loop: a body of many megabytes takes a second to read,
        # and /health and every other request must not wait behind it.
        req = await asyncio.to_thread(_read_chat, await request.body())
        if isinstance(req, JSONResponse):
            return req
        model, messages = req.model, [(m["role"], m["content"]) for m in req.messages]
        opts = {"max_tokens": req.max_tokens, "stream": req.stream, "include_usage": req.include_usage}
        if model not in MODELS:
            return _error(404, f"The model '{model}' does not exist; this server serves {', '.join(MODELS)}.",
                          "invalid_request_error", "model_not_found")
        message, finish, usage = await asyncio.to_thread(compose, model, messages, opts["max_tokens"])
        stats.completions += 1
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if opts["stream"]:
            return StreamingResponse(_sse(cid, model, message, finish, usage if opts["include_usage"] else None),
                                     media_type="text/event-stream")
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage}

    scorer = LogitsProcess(logits_model) if logits_model else None
    app.state.logits = scorer

    @app.post("/v1/completions")
    async def completions(request: Request):
        if denied := unauthorized(request):
            return denied
        stats.requests += 1
        try:
            body = json.loads(await request.body())
            prompt, k, as_ids = _parse_completion(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error")
        served = (logits_name,) if scorer else MODELS
        if body["model"] not in served:
            return _error(404, f"The model '{body['model']}' does not exist; this server serves {', '.join(served)}.",
                          "invalid_request_error", "model_not_found")
        logprobs = None
        if scorer is not None and body.get("echo") and k:
            try:
                logprobs = await asyncio.to_thread(scorer.score, prompt, k, as_ids)
            except BadRequest as e:
                return _error(400, str(e), "invalid_request_error")
        stats.completions += 1
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": body["model"], "choices": [{"index": 0, "text": "", "logprobs": logprobs,
                                                     "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(prompt) if isinstance(prompt, list) else count_tokens(prompt),
                          "completion_tokens": 0, "total_tokens": 0}}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's tokenizer route (only with a --logits-model): lets clients check they share the tokenizer."""
        if denied := unauthorized(request):
            return denied
        if scorer is None:
            return _error(404, "no --logits-model: nothing to tokenize with", "invalid_request_error")
        try:
            body = json.loads(await request.body())
            text = body["prompt"]
            if not isinstance(text, str):
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            return _error(400, "send {\"prompt\": TEXT}", "invalid_request_error")
        tokens = await asyncio.to_thread(scorer.tokenize, text)
        return {"tokens": tokens, "count": len(tokens)}

    return app


def _read_chat(raw: bytes):
    """A chat request the oracle can answer, or the 400 that says why not."""
    try:
        req = parse_chat(json.loads(raw))
        req.refuse("n", "stop", "logprobs")  # the oracle writes one whole answer; `seed`: it is deterministic
        if not any(m["role"] == "user" for m in req.messages):
            raise BadRequest("'messages' must contain a user message", "messages")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON", "invalid_request_error")
    except BadRequest as e:
        return _error(400, e.message, "invalid_request_error", param=e.param)
    return req


def _parse_completion(body) -> tuple[list[int] | str, int, bool]:
    """(prompt: token ids or text, top logprobs asked for, tokens as `token_id:N`) of a completions request."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequest("'model' is required and must be a string")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    ok_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (ok_ids or (isinstance(prompt, str) and prompt)):
        raise BadRequest("'prompt' must be a non-empty string or list of token ids")
    k = body.get("logprobs") or 0
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 1024:
        raise BadRequest("'logprobs' must be an integer from 0 to 1024")
    return prompt, k, bool(body.get("return_tokens_as_token_ids"))


class LogitsProcess:
    """The --logits-model checkpoint, run by the jobs' code in a child process (`python -m
    pai_distil_jobs.serve.scorer MODEL`, one JSON line per request): this server only forwards, so
    it imports neither torch nor the jobs. Started on the first request, so the oracle part of the
    server starts without them; requests are answered one at a time."""

    MODULE = "pai_distil_jobs.serve.scorer"

    def __init__(self, model: str):
        self.spec, self.proc, self.lock = model, None, threading.Lock()
        self._finalizer = None

    def _call(self, request: dict):
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen([sys.executable, "-m", self.MODULE, self.spec], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, encoding="utf-8")
                self._finalizer = weakref.finalize(self, _stop, self.proc)
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except BrokenPipeError:
                line = ""
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the --logits-model process ({self.MODULE} {self.spec}) exited with code {code}; "
                                   "its error is in the log above")
        reply = json.loads(line)
        if "error" in reply:
            raise BadRequest(reply["error"])
        return reply["result"]

    def tokenize(self, text: str) -> list[int]:
        return self._call({"op": "tokenize", "text": text})

    def score(self, prompt, k: int, as_ids: bool) -> dict:
        return self._call({"op": "score", "prompt": prompt, "k": k, "as_ids": as_ids})

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _stop(proc: subprocess.Popen) -> None:
    """End the child: closing its stdin ends its loop; a stuck one is killed."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sse(cid: str, model: str, message: dict, finish: str, usage: dict | None):
    """The completion as OpenAI streaming chunks: role, then one chunk per line, then the finish."""

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                             "logprobs": None}]
        body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        for field in ("reasoning_content", "content"):
            for piece in (message.get(field) or "").splitlines(keepends=True):
                yield chunk({field: piece})
        yield chunk({}, finish)
        if usage is not None:
            yield chunk(None, usage=usage)
        yield "data: [DONE]\n\n"

    return events()


def serve(host: str = "127.0.0.1", port: int = 8400, **kw) -> None:
    """Run the synthetic teacher until interrupted; `kw` goes to `create_app`."""
    import uvicorn

    kw.setdefault("api_key", None)
    uvicorn.run(create_app(**kw), host=host, port=port, log_level="warning")
