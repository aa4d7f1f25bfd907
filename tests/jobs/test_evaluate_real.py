"""`evaluate` on benchmark-shaped files: a checkpoint and an OpenAI-compatible endpoint, pass@1 with
samples, per-source breakdown, thinking modes, code answers in the sandbox, report and chart."""

from __future__ import annotations

import contextlib
import csv
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TEST_API_KEY, job_errors, run_job, start_teacher

from pai_distil.core import config as specs
from pai_distil.core.errors import UserError
from pai_distil.core import world
from pai_distil.core.verifiers import check

KEY_ENV = {"PAI_DISTIL_TEACHER_API_KEY": TEST_API_KEY}
PNG = b"\x89PNG\r\n\x1a\n"


def benchmark_dir(root: Path) -> Path:
    """A MATH-500-shaped file and a GPQA-shaped CSV whose questions the synthetic teacher can solve."""
    d = root / "bench"
    d.mkdir()
    probs = world.generate_problems(6, seed=11)
    with open(d / "math500.jsonl", "w") as f:
        for i, p in enumerate(probs[:3]):
            f.write(json.dumps({"problem": p.text, "solution": "...", "answer": p.answer, "subject": "Arithmetic",
                                "level": p.level, "unique_id": f"test/arith/{i}.json"}) + "\n")
    with open(d / "gpqa.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                    "Incorrect Answer 3"])
        for i, p in enumerate(probs[3:]):
            a = int(p.answer)
            w.writerow([f"g{i}", p.text, str(a), *(str((a + k) % 10) for k in (1, 2, 3))])
    return d


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluate job: a tiny checkpoint in two thinking modes and the synthetic teacher as an endpoint."""
    root = tmp_path_factory.mktemp("eval")
    data = benchmark_dir(root)
    with start_teacher() as teacher:
        cfg = {"models": [{"name": "micro", "model": "preset:micro", "max_new_tokens": 8},
                          {"name": "micro-no-think", "model": "preset:micro", "enable_thinking": False,
                           "max_new_tokens": 8},
                          {"name": "served", "endpoint": {"base_url": teacher.base_url, "model": "oracle",
                                                          "api_key_env": "PAI_DISTIL_TEACHER_API_KEY",
                                                          "concurrency": 3}}],
               "max_new_tokens": 160, "samples": 2, "temperature": 0.7, "top_p": 0.95}
        proc = run_job("evaluate", cfg, root / "out", inputs={"problems": data}, env=KEY_ENV)
        requests = teacher.requests
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root / "out", json.loads((root / "out" / "report.json").read_text()), requests, data


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_report_chart_and_predictions_are_written(evaluated):
    out, report, requests, _ = evaluated
    manifest = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert {"report.json", "predictions.jsonl", "report.png"} <= manifest
    assert (out / "report.png").read_bytes().startswith(PNG) and (out / "report.png").stat().st_size > 20_000
    assert report["n_problems"] == 6 and report["samples"] == 2 and report["sources"] == ["gpqa", "math500"]
    assert [m["name"] for m in report["models"]] == ["micro", "micro-no-think", "served"]
    assert [m["enable_thinking"] for m in report["models"]] == [None, False, None]
    assert [m["kind"] for m in report["models"]] == ["checkpoint", "checkpoint", "endpoint"]
    assert requests == 12  # 6 problems x 2 samples, once each
    for m in report["models"]:
        assert m["overall"]["n"] == 12 and m["overall"]["problems"] == 6
        assert set(m["sources"]) == {"gpqa", "math500"} and m["sources"]["gpqa"]["n"] == 6
        assert "all" in m["levels"]  # GPQA rows have no level


def test_endpoint_verdicts_are_right(evaluated):
    out, report, _, _ = evaluated
    served = report["models"][2]
    assert served["overall"]["accuracy"] == 1.0 and served["overall"]["pass_at_n"] == 1.0
    rows = [r for r in predictions(out) if r["model"] == "served"]
    gpqa = [r for r in rows if r["source"] == "gpqa"]
    assert all(r["correct"] for r in rows) and all(r["extracted"] in "ABCD" for r in gpqa)  # answered by value


def test_checkpoint_verdicts_agree_with_the_verifiers(evaluated):
    out, report, _, data = evaluated
    from pai_distil.core.readers import read_problems

    problems = {p["id"]: p for p in read_problems(data)}
    rows = [r for r in predictions(out) if r["model"] != "served"]
    assert len(rows) == 24 and {r["sample"] for r in rows} == {0, 1}
    for r in rows:
        assert check(problems[r["id"]], r["response"]).correct == r["correct"]
    assert report["models"][0]["overall"]["accuracy"] <= 0.5  # a random tiny student


def test_report_command_renders_tables_and_redraws_the_chart(evaluated, tmp_path):
    out, _, _, _ = evaluated
    before = (out / "report.png").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "report", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "micro-no-think (thinking off)" in proc.stdout and "per source" in proc.stdout
    assert "pass@1 over 2 samples" in proc.stdout and f"chart: {out / 'report.png'}" in proc.stdout
    assert (out / "report.png").read_bytes() == before  # same report, same chart: the artifact stays valid
    other = tmp_path / "again.png"
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "report", str(out), "--chart", str(other)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and other.read_bytes().startswith(PNG)
    # A chart the artifact's manifest lists is never overwritten with different bytes.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.png").write_bytes(b"old chart")
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "report", str(copy)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and (copy / "report.png").read_bytes() == b"old chart"
    assert (tmp_path / "copy-report.png").read_bytes() == before and "copy-report.png" in proc.stdout


def test_summaries_with_samples():
    from pai_distil.core.report import sort_levels, summarize

    recs = [{"id": "a", "level": "2", "source": "s", "correct": c, "tokens": 10, "truncated": False}
            for c in (True, False, False, False)]
    recs += [{"id": "b", "level": "10", "source": "t", "correct": False, "tokens": 30, "truncated": True}] * 4
    s = summarize(recs)
    assert s["overall"]["accuracy"] == 0.125 and s["overall"]["pass_at_n"] == 0.5 and s["overall"]["problems"] == 2
    assert s["sources"]["t"]["truncated"] == 1.0 and list(s["levels"]) == ["2", "10"]
    assert sort_levels(["hard", "all", "easy", "3", "medium"]) == ["3", "easy", "medium", "hard", "all"]


# -- code answers from an endpoint ----------------------------------------------------------------

PROGRAMS = {
    "sum": "a, b = map(int, input().split())\nprint(a + b)",
    "loop": "while True:\n    pass",
    "fork": "import os\nwhile True:\n    os.fork()",
    "alloc": "x = bytearray(50 * 1024 ** 3)",
    "net": "import urllib.request\nurllib.request.urlopen('{url}', timeout=2)",
}


class _Coder(http.server.BaseHTTPRequestHandler):
    """A served 'model' that answers each coding problem with the program its title names."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.server.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        name = prompt.split("[")[1].split("]")[0]
        program = PROGRAMS[name].format(url=self.server.url)
        message = {"role": "assistant", "reasoning_content": "I will write it.",
                   "content": f"Here it is.\n```python\n{program}\n```"}
        reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "coder",
                            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):  # what the sandboxed network call would reach
        self.server.gets += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def coder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Coder)
    server.bodies, server.gets = [], 0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_code_answers_fail_and_the_evaluation_continues(tmp_path):
    tests = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
                        {"input": "5 5\n", "output": "10\n", "testtype": "stdin"}])
    rows = [{"question_title": n, "question_content": f"[{n}] Read A and B, print A + B.", "question_id": n,
             "difficulty": "easy", "public_test_cases": tests, "private_test_cases": "eJzLSM3JyVcozy/KSQEAGgQEOQ==",
             "starter_code": "", "metadata": "{}"} for n in PROGRAMS]
    (tmp_path / "lcb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with coder() as server:
        cfg = {"models": [{"name": "coder", "enable_thinking": False,
                           "endpoint": {"base_url": server.url + "v1", "model": "coder", "max_retries": 0}}],
               "max_new_tokens": 64, "sandbox": {"timeout_s": 1.5, "memory_mb": 256}}
        proc = run_job("evaluate", cfg, tmp_path / "out", inputs={"problems": tmp_path / "lcb.jsonl"})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert server.gets == 0 and len(server.bodies) == len(PROGRAMS)
        assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in server.bodies)
    by_id = {r["id"]: r for r in predictions(tmp_path / "out")}
    assert {k: r["correct"] for k, r in by_id.items()} == {"sum": True, "loop": False, "fork": False,
                                                           "alloc": False, "net": False}
    assert by_id["sum"]["cases"] == ["pass", "pass"] and by_id["loop"]["cases"] == ["timeout", "skipped"]
    assert by_id["fork"]["cases"][0] == "blocked" and by_id["alloc"]["cases"][0] == "memory"
    assert by_id["sum"]["response"].startswith("<think>\nI will write it.\n</think>")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"][0]["overall"]["accuracy"] == pytest.approx(0.2)
    sandbox = report["sandbox"]["isolation"]
    assert sandbox.split(":")[0] in ("bwrap", "docker") and f"code answers run in a sandbox: {sandbox}" in proc.stdout


# -- configuration and input errors ---------------------------------------------------------------


@pytest.mark.parametrize("cfg, fragment", [
    ({"models": [{"name": "a", "model": "preset:micro"}], "samples": 4},
     "samples = 4 with temperature 0 gives 4 identical"),
    ({"models": [{"name": "a", "model": "preset:micro", "endpoint": {"base_url": "http://x/v1", "model": "m"}}]},
     "give exactly one of `model`, `input` or `endpoint`"),
    ({"models": [{"name": "a", "endpoint": {"base_url": "x/v1", "model": "m"}}]}, "must start with http"),
    ({"models": [{"name": "a", "model": "preset:micro"}], "data": {"format": "mmlu"}}, "data.format"),
])
def test_config_errors_name_the_field(cfg, fragment):
    with pytest.raises(UserError) as e:
        specs.validate(specs.EvaluateConfig, cfg, "evaluate config")
    assert fragment in e.value.message


def test_missing_field_fails_the_job_with_file_row_and_field(tmp_path):
    f = tmp_path / "math500.jsonl"
    f.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    proc = run_job("evaluate", {"models": [{"name": "a", "model": "preset:micro"}]}, tmp_path / "out",
                   inputs={"problems": f})
    errors = job_errors(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert str(f) in errors[0] and "row 2" in errors[0] and "'answer'" in errors[0]


def test_unreachable_endpoint_is_one_line(tmp_path):
    from conftest import free_socket

    (tmp_path / "p.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with free_socket() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        cfg = {"models": [{"name": "remote", "endpoint": {"base_url": url, "model": "m", "max_retries": 0}}]}
        proc = run_job("evaluate", cfg, tmp_path / "out", inputs={"problems": tmp_path / "p.jsonl"})
    errors = job_errors(proc)
    assert proc.returncode == 2 and len(errors) == 1
    assert "model 'remote'" in errors[0] and "unreachable" in errors[0] and url in errors[0]


# -- thinking off, as the checkpoint can do it ----------------------------------------------------


def _thinking_pair(model: Path) -> dict:
    return {"problems": {"n": 2, "seed": 9, "levels": [1]}, "max_new_tokens": 4,
            "models": [{"name": "on", "model": str(model)},
                       {"name": "off", "model": str(model), "enable_thinking": False}]}


def test_thinking_off_on_a_template_without_the_switch_fails_before_any_model_decodes(tmp_path):
    """The job's own check (a hub id or a stage input, which `validate` cannot read): one line, at start."""
    from real_models import QWEN25_TEMPLATE, tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "qwen25", arch="qwen2", template=QWEN25_TEMPLATE)
    proc = run_job("evaluate", _thinking_pair(ckpt), tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(job_errors(proc)) == 1 and "models[1] ('off') sets enable_thinking: false, but the chat template " \
        f"of {ckpt} renders the same prompt with true and false" in job_errors(proc)[0]
    assert "[progress] evaluate:on" not in proc.stdout + proc.stderr


def test_a_student_trained_with_no_think_is_evaluated_thinking_off_with_it(tmp_path):
    from real_models import QWEN25_TEMPLATE, tiny_checkpoint

    from pai_distil.core.thinking_switch import SOFT_SWITCH_FILE

    ckpt = tiny_checkpoint(tmp_path / "soft", arch="qwen2", template=QWEN25_TEMPLATE)
    (ckpt / SOFT_SWITCH_FILE).write_text(json.dumps({"off": " /no_think", "on": " /think"}))
    proc = run_job("evaluate", _thinking_pair(ckpt), tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "off: the chat template of" in proc.stdout and "turned off with /no_think in the prompt" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m.get("thinking_off") for m in report["models"]] == [None, "/no_think"]
