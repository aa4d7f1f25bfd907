"""Stage `generate` as a real job against real HTTP servers: happy path, resume, retries, failures."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from pathlib import Path

import pytest
from conftest import TEST_API_KEY, job_errors, run_job

from pai_distil.core import world

KEY_ENV = {"PAI_DISTIL_TEACHER_API_KEY": TEST_API_KEY}


def config(base_url: str, n: int = 12, verbosity=(2, 6), **teacher) -> dict:
    return {"teacher": {"base_url": base_url, "concurrency": 4, **teacher},
            "problems": {"n": n, "seed": 7}, "verbosity": list(verbosity)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_failed_cleanly(proc, out: Path, *fragments: str) -> str:
    errors = job_errors(proc)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "manifest.json").exists()
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def test_happy_path(synthetic_teacher, tmp_path):
    out = tmp_path / "out"
    proc = run_job("generate", config(synthetic_teacher.base_url), out, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "cots.jsonl")
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert synthetic_teacher.requests == 24
    r = rows[0]
    assert set(r) >= {"id", "problem_id", "problem", "answer", "thought", "solution", "teacher", "correct", "rv", "cd",
                      "requested_rv", "finish_reason", "completion_tokens", "meta"}
    assert r["id"] == f"{r['problem_id']}-rv{r['requested_rv']}" and r["teacher"] == "oracle"
    assert all(r["correct"] and r["finish_reason"] == "stop" and r["thought"] for r in rows)
    by_rv = {rv: sum(r["completion_tokens"] for r in rows if r["requested_rv"] == rv) for rv in (2, 6)}
    assert by_rv[6] > by_rv[2]  # the verbosity in the system prompt reached the teacher

    sft = read_jsonl(out / "sft.jsonl")
    assert len(sft) == 24
    user, assistant = sft[0]["messages"]
    assert user["role"] == "user" and assistant["content"].startswith("<think>\n")
    assert assistant["role"] == "assistant" and "\n</think>\n\n" in assistant["content"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_accuracy"] == 1.0 and summary["unparseable"] == 0 and summary["samples"] == 24
    assert sum(v["samples"] for v in summary["per_level"].values()) == 24
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"cots.jsonl", "sft.jsonl", "summary.json"}
    assert "[progress] generate 24/24" in proc.stdout


def test_problems_input_and_reasoning_content(teacher_factory, tmp_path):
    """Problems from a JSONL input directory; reasoning returned in `reasoning_content`."""
    t = teacher_factory(reasoning_content=True)
    src = tmp_path / "problems"
    src.mkdir()
    problems = [p.to_row() for p in world.generate_problems(5, seed=2)]
    (src / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    cfg = config(t.base_url, verbosity=[5])
    del cfg["problems"]
    out = tmp_path / "out"
    proc = run_job("generate", cfg, out, inputs={"problems": src}, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "cots.jsonl")
    assert {r["problem_id"] for r in rows} == {p["id"] for p in problems}
    assert all(r["correct"] and "Step 1" in r["thought"] and "<think>" not in r["solution"] for r in rows)


def test_bad_problem_row_names_row_and_field(synthetic_teacher, tmp_path):
    src = tmp_path / "problems.jsonl"
    rows = [{"id": "a", "problem": "x", "answer": "1"}, {"id": "b", "problem": "y"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(synthetic_teacher.base_url)
    del cfg["problems"]
    proc = run_job("generate", cfg, tmp_path / "out", inputs={"problems": src}, env=KEY_ENV)
    assert_failed_cleanly(proc, tmp_path / "out", "row 2", "'answer'")
    assert synthetic_teacher.requests == 0


def test_resume_asks_only_for_missing_rows(synthetic_teacher, tmp_path):
    out = tmp_path / "out"
    first = run_job("generate", config(synthetic_teacher.base_url), out, env=KEY_ENV)
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(out / "cots.jsonl")
    # Keep 10 rows and a line torn mid-write, as a killed job leaves them.
    torn = json.dumps(rows[10])[:40]
    (out / "cots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]) + torn)
    (out / "manifest.json").unlink()
    before = synthetic_teacher.requests

    proc = run_job("generate", config(synthetic_teacher.base_url), out, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    assert synthetic_teacher.requests - before == 14
    again = read_jsonl(out / "cots.jsonl")  # every line parses: the torn one was cut
    assert len(again) == 24 and {r["id"] for r in again} == {r["id"] for r in rows}
    assert (out / "manifest.json").exists() and "resuming, 10 of 24" in proc.stdout


def test_retries_recover_from_injected_failures(teacher_factory, tmp_path):
    t = teacher_factory(fail_rate=0.3)
    out = tmp_path / "out"
    # Failures fall on every third or fourth request the server sees; with 4 requests in flight,
    # one request's retries can keep landing on them, and the default 4 retries ran out in CI.
    # Each retry waits only the server's 20 ms, so 12 cost nothing.
    proc = run_job("generate", config(t.base_url, n=15, max_retries=12), out, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    assert t.stats.failures > 0 and t.stats.completions == 30
    assert len(read_jsonl(out / "cots.jsonl")) == 30


def test_unreachable_teacher(tmp_path):
    from conftest import free_socket

    with free_socket() as sock:  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        proc = run_job("generate", config(url, max_retries=1), tmp_path / "out", env=KEY_ENV)
    assert_failed_cleanly(proc, tmp_path / "out", "unreachable", url, "pai-distil teacher serve --synthetic")


def test_missing_key_names_the_env_var(synthetic_teacher, tmp_path):
    proc = run_job("generate", config(synthetic_teacher.base_url), tmp_path / "out",
                   env={"PAI_DISTIL_TEACHER_API_KEY": ""})
    assert_failed_cleanly(proc, tmp_path / "out", "PAI_DISTIL_TEACHER_API_KEY", "401")


def test_always_500_fails_after_retries(teacher_factory, tmp_path):
    t = teacher_factory(fail_rate=1.0)
    proc = run_job("generate", config(t.base_url, max_retries=2), tmp_path / "out", env=KEY_ENV)
    line = assert_failed_cleanly(proc, tmp_path / "out", t.base_url)
    assert "HTTP 500" in line or "HTTP 429" in line
    assert not (tmp_path / "out" / "cots.jsonl").read_text()


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's canned (content type, body)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        ctype, body = self.server.reply(self.server)
        try:
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, job stopped)
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def canned_server(reply):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.reply = reply
    server.count = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _nonsense_completion(server) -> tuple[str, bytes]:
    server.count += 1
    body = {"id": f"c{server.count}", "object": "chat.completion", "created": 0, "model": "oracle",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "I like turtles."}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
    return "application/json", json.dumps(body).encode()


@pytest.mark.parametrize("reply", [
    lambda s: ("text/html", b"<html><body>Welcome to nginx!</body></html>"),
    lambda s: ("application/json", b"not json at all"),
    lambda s: ("application/json", b'{"id": "x", "object": "chat.completion"}'),
], ids=["html", "bad-json", "no-choices"])
def test_garbage_response_is_not_a_completion(tmp_path, reply):
    with canned_server(reply) as url:
        proc = run_job("generate", config(url, max_retries=0), tmp_path / "out", env=KEY_ENV)
    assert_failed_cleanly(proc, tmp_path / "out", "not an OpenAI chat completion", url)


def test_nonsense_answers_fail_the_parse_check(tmp_path):
    with canned_server(_nonsense_completion) as url:
        proc = run_job("generate", config(url, n=30, verbosity=[4], max_retries=0), tmp_path / "out", env=KEY_ENV)
    assert_failed_cleanly(proc, tmp_path / "out", "cannot be parsed", "teacher.model", "system_prompt")
    rows = read_jsonl(tmp_path / "out" / "cots.jsonl")
    assert 20 <= len(rows) < 30 and not any(r["correct"] for r in rows)  # kept for a rerun


def test_teacher_that_never_answers_times_out(tmp_path):
    def slow(server):
        threading.Event().wait(3)
        return _nonsense_completion(server)

    with canned_server(slow) as url:
        proc = run_job("generate", config(url, n=2, verbosity=[4], max_retries=0, timeout_s=0.5), tmp_path / "out",
                       env=KEY_ENV)
    assert_failed_cleanly(proc, tmp_path / "out", "unreachable", "no answer within 0.5 s")


def test_repeated_levels_weigh_the_draw():
    """Levels are drawn in turn, so a level named three times gives three problems in four."""
    problems = world.generate_problems(400, seed=7, levels=[2, 2, 2, 1])
    assert sum(p.level == 2 for p in problems) == 300
    assert {p.level for p in problems[3::4]} == {1}
