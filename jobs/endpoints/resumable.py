"""Resumable, bounded-concurrency requests to an OpenAI-compatible endpoint.

Every stage that asks an endpoint about many items (generate, score, reward-model's judge,
evaluate's served models) goes through `run_pool`: results are appended to a JSONL file as they
arrive, a restarted job skips ids already written (`pending`), a torn last line from a kill is
cut off, SIGTERM stops at once, and the first one-line JobError of any worker ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import openai

from pai_distil.core.config import Teacher

from pai_distil.core.contract import JobError, log
from pai_distil.core.url_credentials import unmasked

PROGRESS_EVERY_S = 2.0


def load_done(path: Path, what: str = "sample") -> dict[str, dict]:
    """Rows already written, by id; a torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log(f"dropping a torn last line of {path.name} ({len(data) - end} bytes)")
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    done = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise JobError(f"{path} line {n} is not a {what} row; delete the file to start from scratch") from None
    return done


def client(endpoint: Teacher) -> openai.AsyncOpenAI:
    """The official client; it retries 429, 5xx and timeouts with exponential backoff."""
    key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
    return openai.AsyncOpenAI(base_url=unmasked(endpoint.base_url), api_key=key or "EMPTY",
                              max_retries=endpoint.max_retries, timeout=endpoint.timeout_s)


class Stopped(Exception):
    """SIGTERM arrived: rows so far are kept and a rerun resumes."""


def pending(items: Iterable, key: Callable[[object], str], out: Path, what: str = "sample") -> tuple[dict[str, dict], list]:
    """(rows already in `out` by id, the items whose `key` is not among them): what a resubmitted job still asks."""
    done = load_done(out, what)
    return done, [item for item in items if key(item) not in done]


async def run_pool(items: Iterable, ask: Callable[[openai.AsyncOpenAI, object], Awaitable[dict]],
                   endpoint: Teacher, out: Path | None = None, task: str | None = None, total: int = 0,
                   done: int = 0, on_row: Callable[[dict], None] | None = None) -> int:
    """Ask about every item with at most `endpoint.concurrency` requests in flight; the one worker pool
    of the stages that talk to an OpenAI-compatible endpoint (generate, score, reward-model, evaluate).

    The client retries 429, 5xx and timeouts with backoff (`client`). With `out`, each row is appended
    to it as it arrives (JSONL, flushed: a rerun skips what `pending` finds there) and SIGTERM stops
    at once with Stopped; without, rows only go to `on_row`. With `task`, `[progress] TASK DONE/TOTAL`
    is logged at the start, every PROGRESS_EVERY_S and at the end (`done`: rows of earlier runs).
    `on_row` sees every row; a JobError it or `ask` raises ends the run (the first one is raised).
    Returns the number of rows this run produced.
    """
    count = {"done": done, "written": 0, "last": 0.0}

    def progress(force: bool = False) -> None:
        now = time.monotonic()
        if task is not None and (force or now - count["last"] >= PROGRESS_EVERY_S):
            count["last"] = now
            log(f"[progress] {task} {count['done']}/{total}")

    current = asyncio.current_task()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        current.cancel()

    if out is not None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass

    workers = endpoint.concurrency if not hasattr(items, "__len__") else min(endpoint.concurrency, len(items))
    iterator = iter(items)
    progress(force=True)

    async def worker(c: openai.AsyncOpenAI, f) -> None:
        # Workers pull from one iterator: bounded concurrency with constant memory.
        for item in iterator:
            row = await ask(c, item)
            if f is not None:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
            count["done"] += 1
            count["written"] += 1
            if on_row:
                on_row(row)
            progress()

    try:
        async with client(endpoint) as c:
            with open(out, "a", encoding="utf-8") if out is not None else contextlib.nullcontext() as f:
                try:
                    async with asyncio.TaskGroup() as tg:
                        for _ in range(workers):
                            tg.create_task(worker(c, f))
                except* JobError as group:
                    raise group.exceptions[0] from None
    except asyncio.CancelledError:
        if stopping:
            progress(force=True)
            raise Stopped() from None
        raise
    progress(force=True)
    return count["written"]


async def ask_in_order(items: list, ask: Callable[[openai.AsyncOpenAI, object], Awaitable[object]],
                       endpoint: Teacher, on_done: Callable[[], None] | None = None) -> list:
    """Every item's answer in the items' order, through `run_pool` (nothing written: nothing to resume)."""
    answers: list = [None] * len(items)

    async def indexed(c: openai.AsyncOpenAI, item: tuple[int, object]) -> dict:
        i, x = item
        answers[i] = await ask(c, x)
        if on_done:
            on_done()
        return {}

    await run_pool(list(enumerate(items)), indexed, endpoint)
    return answers


def explain_failure(e: Exception, endpoint: Teacher, role: str = "teacher") -> str:
    """One line naming the problem with the endpoint and the fix."""
    url = endpoint.base_url
    field = f"{role}.base_url"
    if isinstance(e, openai.APIResponseValidationError | ValueError | NotACompletion):
        return (f"{role} at {url} returned something that is not an OpenAI chat completion; "
                f"check that {field} points at an OpenAI-compatible API (ending in /v1)")
    if isinstance(e, openai.APIConnectionError):  # includes APITimeoutError
        why = (f"no answer within {endpoint.timeout_s:g} s" if isinstance(e, openai.APITimeoutError)
               else _first_line(e.__cause__ or e))
        return (f"{role} at {url} is unreachable ({why}, {_retries(endpoint.max_retries)}); "
                f"start it with `pai-distil teacher serve --synthetic` or fix {field}")
    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        env = endpoint.api_key_env
        if not env:
            return (f"{role} at {url} refused the request (HTTP {e.status_code}) and no key was sent; "
                    f"set {role}.api_key_env to the name of an environment variable holding the key")
        state = "is not set" if not os.environ.get(env) else "holds a key it rejected"
        return f"{role} at {url} refused the request (HTTP {e.status_code}): environment variable {env} {state}; set {env} to its API key"
    if isinstance(e, openai.NotFoundError):
        return f"{role} at {url} answered HTTP 404 ({_detail(e)}); check {role}.model and that {field} ends in /v1"
    if isinstance(e, openai.APIStatusError):
        return (f"{role} at {url} answered HTTP {e.status_code} ({_detail(e)}, {_retries(endpoint.max_retries)}); "
                f"check the service, or raise {role}.max_retries / lower {role}.concurrency")
    return f"{role} at {url} failed: {type(e).__name__}: {_first_line(e)}"


class NotACompletion(Exception):
    pass


def message_of(resp) -> tuple[dict, dict, dict]:
    """(choice, message, usage) of a chat completion, checked: a broken server can send anything."""
    data = resp.model_dump() if hasattr(resp, "model_dump") else resp
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise NotACompletion()
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise NotACompletion()
    for key in ("content", "reasoning_content", "reasoning"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise NotACompletion()
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return choices[0], message, usage


def _retries(n: int) -> str:
    return f"after {n} retr{'y' if n == 1 else 'ies'}" if n else "no retries"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _detail(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"].splitlines()[0][:200] if body["message"].strip() else "no message"
    return _first_line(e)
