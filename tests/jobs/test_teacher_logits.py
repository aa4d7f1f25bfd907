"""The teacher-logits stage: compact sharded top-k, a served teacher answering like vLLM, resume after
a kill without rescoring, and the one-line refusals (another tokenizer, no logprobs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, job_errors, run_job, serve_asgi

from pai_distil.core import oracle as teacher, world
from pai_distil.synthetic.server import create_app
from pai_distil_jobs.train.teacher_topk import TopKStore, shard_name, shard_range, size_report, todo_runs, write_shard


def cots(path: Path, n: int = 16) -> Path:
    with open(path, "w") as f:
        for p in world.generate_problems(n, 4, levels=[1, 2]):
            thought, solution = world.split_thought(teacher.respond(p, 2))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    return path


@pytest.mark.parametrize("vocab", [451, 151_936])  # the presets' tokenizer (uint16 ids), Qwen's (int32)
def test_ten_thousand_rows_at_k20_take_at_most_twice_their_top_k_ids_in_int32(tmp_path, vocab):
    rng = np.random.default_rng(0)
    k, rows, shard = 20, 10_000, 1000
    lengths = rng.integers(20, 60, rows)  # trained tokens per row, as synthetic-world answers have
    for a in range(0, rows, shard):
        scored, targets = [], []
        for n in lengths[a:a + shard]:
            ids = rng.integers(0, vocab, (n, k))
            lps = np.sort(rng.normal(-6, 3, (n, k)).clip(max=0), axis=1)[:, ::-1]
            scored.append((ids, lps))
            targets.append(ids[:, 0].tolist())
        write_shard(tmp_path, a, a + shard, [f"row-{i}" for i in range(a, a + shard)], scored, targets, k, vocab,
                    {"teacher": "t"})
    report = size_report(tmp_path)
    assert report["tokens"] == int(lengths.sum()) and report["shards"] == 10
    assert report["bytes"] <= 2 * report["topk_ids_int32_bytes"], report
    print(f"vocab {vocab}: {report['bytes'] / 2**20:.1f} MiB, {report['ratio_to_topk_ids_int32']}x the top-k ids in int32")
    store = TopKStore(tmp_path)
    targets, ids, lps = store.get("row-1234")
    assert ids.shape == (lengths[1234], k) and (targets == ids[:, 0]).all()
    assert np.all(np.diff(lps, axis=1) <= 0)  # most likely first, fp16 rounding keeps the order


def test_todo_runs_cut_at_shard_boundaries_around_what_is_done():
    assert todo_runs(10, set(), 4) == [(0, 4), (4, 8), (8, 10)]
    assert todo_runs(10, {0, 1, 2, 3, 5}, 4) == [(4, 5), (6, 8), (8, 10)]
    assert todo_runs(4, {0, 1, 2, 3}, 4) == []


def test_a_served_teacher_gives_what_the_same_checkpoint_gives_in_the_job(tmp_path):
    path = cots(tmp_path / "cots.jsonl")
    base = {"student": {"model": "preset:micro"}, "top_k": 8, "max_length": 128, "shard_rows": 5}
    local = run_job("teacher-logits", {**base, "teacher": {"model": "preset:micro", "seed": 0}}, tmp_path / "local",
                    inputs={"cots": path})
    assert local.returncode == 0, local.stderr[-2000:]
    with serve_asgi(create_app(api_key=None, logits_model="preset:micro")) as url:
        served = run_job("teacher-logits", {**base, "teacher": {"endpoint": {"base_url": url + "/v1", "model": "teacher",
                                                                            "api_key_env": None}}},
                         tmp_path / "served", inputs={"cots": path})
    assert served.returncode == 0, served.stderr[-2000:]
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["rows"] == 16 and summary["shards"] == 4 and summary["ratio_to_topk_ids_int32"] <= 2
    a, b = TopKStore(tmp_path / "local"), TopKStore(tmp_path / "served")
    assert len(a) == len(b) == 16
    for key in a._where:
        (ta, ia, la), (tb, ib, lb) = a.get(key), b.get(key)
        assert (ta == tb).all() and (ia == ib).all()
        assert np.allclose(la, lb, atol=2e-2)  # fp16 on disk


def test_the_truncation_report_names_the_stages_own_top_level_fields(tmp_path):
    path = cots(tmp_path / "cots.jsonl")
    cfg = {"student": {"model": "preset:micro"}, "teacher": {"model": "preset:micro"}, "max_length": 128}
    ok = run_job("teacher-logits", cfg, tmp_path / "ok", inputs={"cots": path})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "rows cut at max_length=128" in ok.stdout and "train.max_length" not in ok.stdout
    cut = run_job("teacher-logits", {**cfg, "max_length": 16}, tmp_path / "cut", inputs={"cots": path})
    assert cut.returncode != 0 and len(job_errors(cut)) == 1, cut.stderr[-2000:]
    assert "max_length=16" in job_errors(cut)[0] and "train." not in job_errors(cut)[0]


def _start_job(config: dict, output: Path, inputs: dict, log: Path) -> subprocess.Popen:
    fd, cfg = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    env.update(PAI_DISTIL_STAGE="teacher-logits", PAI_DISTIL_CONFIG=cfg, PAI_DISTIL_OUTPUT=str(output),
               PYTHONUNBUFFERED="1", **{f"PAI_DISTIL_INPUT_{n.upper()}": str(p) for n, p in inputs.items()})
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "pai_distil_jobs"], env=env, cwd=ROOT, start_new_session=True,
                                stdout=f, stderr=subprocess.STDOUT)


def test_a_killed_scoring_job_resumes_without_rescoring_finished_rows(tmp_path):
    path = cots(tmp_path / "cots.jsonl", n=120)
    out = tmp_path / "out"
    app = create_app(api_key=None, logits_model="preset:micro")
    with serve_asgi(app) as url:
        cfg = {"teacher": {"endpoint": {"base_url": url + "/v1", "model": "teacher", "api_key_env": None,
                                        "concurrency": 1}},
               "student": {"model": "preset:micro"}, "top_k": 4, "max_length": 128, "shard_rows": 4}
        job = _start_job(cfg, out, {"cots": path}, tmp_path / "job.log")
        deadline = time.time() + 300
        while len(list(out.glob(shard_name(0, 0)[:6] + "*.safetensors"))) < 3:
            assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-2000:]
            time.sleep(0.02)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        first = {p.name: p.read_bytes() for p in out.glob("shard-*.safetensors")}
        finished = sum(int(n.split("-")[2].split(".")[0]) - int(n.split("-")[1]) for n in first)
        assert not (out / "summary.json").exists() and 3 <= finished < 120
        asked = app.state.stats.completions
        again = run_job("teacher-logits", cfg, out, inputs={"cots": path}, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming, {finished} of 120 rows already scored" in again.stdout
    assert app.state.stats.completions - asked == 120 - finished  # one request per row not yet in a shard
    for name, data in first.items():
        assert (out / name).read_bytes() == data  # finished shards are left as they were
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 120 and summary["resumed"] == finished and summary["scored"] == 120 - finished
    assert sum(b - a for a, b in map(shard_range, out.glob("shard-*.safetensors"))) == 120


def test_a_served_teacher_without_logprobs_is_refused_naming_the_endpoint(tmp_path):
    path = cots(tmp_path / "cots.jsonl", n=4)
    with serve_asgi(create_app(api_key=None)) as url:  # answers completions, but without logprobs
        proc = run_job("teacher-logits", {"teacher": {"endpoint": {"base_url": url + "/v1", "api_key_env": None}},
                                          "student": {"model": "preset:micro"}}, tmp_path / "o", inputs={"cots": path})
    assert proc.returncode == 2
    assert job_errors(proc) == [
        f"pai-distil job error: teacher at {url}/v1 returned no prompt logprobs (no choices[0].logprobs.top_logprobs "
        "in its answer); serve it with vLLM (its completions API echoes prompt logprobs; start it with "
        "--max-logprobs >= top_k) or `pai-distil teacher serve --synthetic --logits-model DIR`, or fix "
        "teacher.endpoint.base_url"]


def test_a_teacher_with_another_tokenizer_is_refused_before_scoring(tmp_path):
    from real_models import tiny_checkpoint

    path = cots(tmp_path / "cots.jsonl", n=4)
    qwen = tiny_checkpoint(tmp_path / "qwen3")
    proc = run_job("teacher-logits", {"teacher": {"model": str(qwen)}, "student": {"model": "preset:micro"}},
                   tmp_path / "local", inputs={"cots": path})
    assert proc.returncode == 2
    assert job_errors(proc) == [
        f"pai-distil job error: teacher {str(qwen)!r} has another tokenizer than student 'preset:micro' (151669 vs "
        "451 tokens): its token distributions mean nothing to the student; use a teacher of the student's family "
        "(same tokenizer), or distil black-box from its samples"]
    app = create_app(api_key=None, logits_model=str(qwen))
    with serve_asgi(app) as url:
        proc = run_job("teacher-logits", {"teacher": {"endpoint": {"base_url": url + "/v1", "model": "teacher",
                                                                  "api_key_env": None}},
                                          "student": {"model": "preset:micro"}}, tmp_path / "served",
                       inputs={"cots": path})
    assert proc.returncode == 2
    assert job_errors(proc)[0].startswith(f"pai-distil job error: teacher at {url}/v1 has another tokenizer than "
                                          "the student (its /tokenize gives other ids)")
    assert app.state.stats.completions == 0  # refused before anything was scored


def test_real_qwen3_checkpoints_score_into_int32_ids_and_train_a_kd_student(tmp_path):
    from real_models import tiny_checkpoint

    path = cots(tmp_path / "cots.jsonl", n=8)
    teacher_ckpt = tiny_checkpoint(tmp_path / "teacher", seed=1)
    student_ckpt = tiny_checkpoint(tmp_path / "student", seed=2)
    proc = run_job("teacher-logits", {"teacher": {"model": str(teacher_ckpt)}, "student": {"model": str(student_ckpt)},
                                      "top_k": 20, "max_length": 256}, tmp_path / "logits", inputs={"cots": path})
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors import safe_open

    with safe_open(str(next((tmp_path / "logits").glob("shard-*"))), framework="np") as f:
        assert f.get_slice("ids").get_dtype() == "I32"  # a 151 k vocabulary does not fit uint16
    assert json.loads((tmp_path / "logits" / "summary.json").read_text())["ratio_to_topk_ids_int32"] <= 2
    train = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, "warmup_steps": 0, "log_every": 1,
             "max_length": 256, "gradient_checkpointing": False}
    proc = run_job("slow-thinking", {"student": {"model": str(student_ckpt)}, "train": train,
                                     "distill": {"mode": "logits", "divergence": "jsd"}}, tmp_path / "kd",
                   inputs={"cots": path, "teacher_logits": tmp_path / "logits"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["kd"] > 0 for r in records)
