"""The one worker pool of the endpoint stages (`resumable.run_pool`): bounded concurrency, the client's
retries, resumption (`pending` skips what an earlier run wrote), progress lines, the first JobError, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import openai
import pytest

from pai_distil.core.config import Teacher
from pai_distil.core.contract import JobError
from pai_distil_jobs.endpoints import resumable
from pai_distil_jobs.endpoints.resumable import Stopped, explain_failure, load_done, message_of, pending, run_pool


@pytest.fixture
def no_client(monkeypatch):
    """The pool's client, replaced by a stand-in the fake `ask`s below never use."""
    @contextlib.asynccontextmanager
    async def fake(endpoint):
        yield object()

    monkeypatch.setattr(resumable, "client", fake)


def endpoint(concurrency: int = 4, **kw) -> Teacher:
    return Teacher(base_url="http://127.0.0.1:9/v1", api_key_env=None, concurrency=concurrency, **kw)


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("concurrency, n, expected", [(3, 20, 3), (8, 5, 5), (1, 4, 1)])
def test_at_most_concurrency_requests_are_in_flight(no_client, tmp_path, concurrency, n, expected):
    in_flight, peak = 0, 0

    async def ask(c, item):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return {"id": str(item)}

    out = tmp_path / "rows.jsonl"
    written = asyncio.run(run_pool(range(n), ask, endpoint(concurrency), out, total=n))
    assert written == n
    assert peak == expected  # the pool fills up, and never beyond the bound (nor beyond the items)
    assert sorted(int(r["id"]) for r in rows_of(out)) == list(range(n))


def test_a_resubmitted_job_asks_only_for_what_is_missing(no_client, tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps({"id": f"x{i}", "v": i}) + "\n" for i in (0, 2)) + '{"id": "x4", "v"')  # torn
    asked = []

    async def ask(c, item):
        asked.append(item)
        return {"id": f"x{item}", "v": item}

    done, todo = pending(range(6), lambda i: f"x{i}", out)
    assert set(done) == {"x0", "x2"} and todo == [1, 3, 4, 5]  # the torn row counts as not done
    assert asyncio.run(run_pool(todo, ask, endpoint(2), out, total=6, done=len(done))) == 4
    assert sorted(asked) == [1, 3, 4, 5]
    assert sorted(load_done(out)) == [f"x{i}" for i in range(6)]  # each id once: the torn line was cut
    assert pending(range(6), lambda i: f"x{i}", out)[1] == []


def test_progress_lines_count_the_rows_of_earlier_runs(no_client, tmp_path, capsys):
    async def ask(c, item):
        return {"id": str(item)}

    asyncio.run(run_pool([5, 6, 7], ask, endpoint(2), tmp_path / "r.jsonl", "judge", total=8, done=5))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    assert lines[0] == "[progress] judge 5/8" and lines[-1] == "[progress] judge 8/8"


def test_without_a_file_rows_go_to_on_row_only_and_nothing_is_logged(no_client, tmp_path, capsys):
    seen = []

    async def ask(c, item):
        return {"id": item}

    assert asyncio.run(run_pool(["a", "b", "c"], ask, endpoint(2), on_row=seen.append)) == 3
    assert sorted(r["id"] for r in seen) == ["a", "b", "c"]
    assert "[progress]" not in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_the_first_job_error_ends_the_run_and_rows_so_far_stay(no_client, tmp_path):
    async def ask(c, item):
        if item == 3:
            raise JobError("teacher at X answered nonsense")
        return {"id": str(item)}

    out = tmp_path / "rows.jsonl"
    with pytest.raises(JobError, match="answered nonsense"):  # the one-line error, not an ExceptionGroup
        asyncio.run(run_pool(range(10), ask, endpoint(1), out, total=10))
    assert [r["id"] for r in rows_of(out)] == ["0", "1", "2"]


def test_a_job_error_of_on_row_ends_the_run_too(no_client, tmp_path):
    def check(row):
        if row["id"] == "1":
            raise JobError("too many unreadable answers")

    async def ask(c, item):
        return {"id": str(item)}

    with pytest.raises(JobError, match="unreadable"):
        asyncio.run(run_pool(range(5), ask, endpoint(1), tmp_path / "r.jsonl", on_row=check))


def test_sigterm_stops_at_once_keeping_the_rows(no_client, tmp_path):
    async def ask(c, item):
        if item == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(5)
        return {"id": str(item)}

    out = tmp_path / "rows.jsonl"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Stopped):
            asyncio.run(run_pool(range(10), ask, endpoint(1), out, total=10))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [r["id"] for r in rows_of(out)] == ["0", "1"]


async def _chat(c: openai.AsyncOpenAI, item: int, teacher: Teacher) -> dict:
    try:
        resp = await c.chat.completions.create(model="oracle", max_tokens=50, messages=[
            {"role": "user", "content": f"Start with {item}. Add 1. Work modulo 10. What is the result?"}])
        _, message, _ = message_of(resp)
    except (openai.OpenAIError, ValueError) as e:
        raise JobError(explain_failure(e, teacher)) from None
    return {"id": str(item), "content": message["content"]}


def test_the_client_retries_failed_requests_with_backoff(teacher_factory, tmp_path):
    t = teacher_factory(api_key=None, fail_rate=0.3)
    teacher = Teacher(base_url=t.base_url, api_key_env=None, concurrency=3, max_retries=5)
    out = tmp_path / "rows.jsonl"
    assert asyncio.run(run_pool(range(12), lambda c, i: _chat(c, i, teacher), teacher, out, total=12)) == 12
    assert t.stats.failures > 0 and t.stats.completions == 12
    assert t.stats.requests == t.stats.completions + t.stats.failures  # each failure was asked again


def test_without_retries_a_failure_is_one_line_naming_the_endpoint(teacher_factory, tmp_path):
    t = teacher_factory(api_key=None, fail_rate=1.0)
    teacher = Teacher(base_url=t.base_url, api_key_env=None, concurrency=1, max_retries=0)
    with pytest.raises(JobError) as err:
        asyncio.run(run_pool(range(4), lambda c, i: _chat(c, i, teacher), teacher, tmp_path / "r.jsonl", total=4))
    assert f"teacher at {t.base_url} answered HTTP 500" in str(err.value) and "no retries" in str(err.value)
