"""End to end on the process backend: pipelines, cache hits, failures, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import wait_until

from pai_distil.core.artifacts import is_complete, verify

CLI = [sys.executable, "-m", "pai_distil"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("PAI_DISTIL_HOME", str(h))
    return h


def cli(*args, key=None, timeout=600):
    env = dict(os.environ)
    if key:
        env["PAI_DISTIL_TEACHER_API_KEY"] = key
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def generate_config(teacher, n=120, seed=1):
    return {"teacher": {"base_url": teacher.base_url, "max_retries": 1}, "problems": {"n": n, "seed": seed}}


def micro_pipeline(teacher, steps=20):
    return {"name": "micro", "stages": {
        "cots": {"stage": "generate", "config": generate_config(teacher)},
        "student": {"stage": "slow-thinking", "inputs": {"cots": "cots"},
                    "config": {"student": {"model": "preset:micro"},
                               "train": {"max_steps": steps, "batch_size": 8, "checkpoint_every": 10}}},
        "eval": {"stage": "evaluate", "inputs": {"student": "student"},
                 "config": {"problems": {"n": 24, "seed": 7}, "max_new_tokens": 48,
                            "models": [{"name": "untrained", "model": "preset:micro"},
                                       {"name": "distilled", "input": "student"}]}},
    }}


def test_pipeline_runs_and_second_run_is_cached(home, tmp_path, synthetic_teacher):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(micro_pipeline(synthetic_teacher)))
    first = cli("run", path, key=synthetic_teacher.api_key)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "distilled" in first.stdout and "level 3" in first.stdout

    from pai_distil.run.registry import Registry

    runs = {r.stage: r for r in Registry().list()}
    assert {r.state for r in runs.values()} == {"succeeded"}
    for r in runs.values():
        verify(r.output)
    student = Path(runs["slow-thinking"].output)
    assert (student / "config.json").is_file() and (student / "model.safetensors").is_file()
    assert (student / "tokenizer.json").is_file() and (student / "chat_template.jinja").exists() or \
        "chat_template" in (student / "tokenizer_config.json").read_text()
    metrics = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 20
    report = json.loads((Path(runs["evaluate"].output) / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["untrained", "distilled"]
    assert set(report["models"][0]["levels"]) == {"1", "2", "3"}

    served = synthetic_teacher.requests
    second = cli("run", path, key=synthetic_teacher.api_key)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("cache hit") == 3
    assert synthetic_teacher.requests == served  # the teacher was not asked again


def test_failed_teacher_leaves_no_complete_artifact(home, tmp_path, teacher_factory):
    teacher = teacher_factory(fail_rate=1.0)
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump(generate_config(teacher, n=10)))
    proc = cli("submit", "generate", "--config", cfg, key=teacher.api_key)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "HTTP 500" in errors[0] or "HTTP 429" in errors[0], proc.stderr[-2000:]
    from pai_distil.run.registry import Registry

    (run,) = Registry().list()
    assert run.state == "failed" and not is_complete(run.output)
    assert Registry().find_succeeded(run.cache_key) is None


def test_unreachable_teacher_is_one_line_error(home, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0},
                                   "problems": {"n": 5}}))
    proc = cli("submit", "generate", "--config", cfg)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "unreachable" in errors[0], proc.stderr[-2000:]


def test_sigkill_mid_training_then_resubmit_resumes(home, tmp_path, synthetic_teacher):
    from pai_distil.run.registry import Registry
    from pai_distil_jobs.train.trainer import newest_checkpoint

    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump(generate_config(synthetic_teacher, n=60)))
    proc = cli("submit", "generate", "--config", gen, key=synthetic_teacher.api_key)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cots = proc.stdout.strip().splitlines()[-1]

    cfg = tmp_path / "st.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                   "train": {"max_steps": 400, "batch_size": 4, "checkpoint_every": 20,
                                             "log_every": 20}}))
    proc = cli("submit", "slow-thinking", "--config", cfg, "--input", f"cots={cots}", "--detach")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = Registry().list(stage="slow-thinking")[0]
    ckpt_dir = Path(run.work_dir) / "checkpoints"

    ckpt = wait_until(lambda: (c := newest_checkpoint(ckpt_dir)) and int(c.name.split("-")[1]) >= 40 and c)
    job_pid = Registry().get(run.id).job_pid
    os.killpg(os.getpgid(job_pid), signal.SIGKILL)
    dead = wait_until(lambda: (r := Registry().get(run.id)).terminal and r)
    assert dead.state == "failed" and not is_complete(dead.output)
    killed_at = int(newest_checkpoint(ckpt_dir).name.split("-")[1])
    assert killed_at >= int(ckpt.name.split("-")[1])

    again = cli("submit", "slow-thinking", "--config", cfg, "--input", f"cots={cots}")
    assert again.returncode == 0, again.stderr[-3000:]
    Path("/tmp/again.txt").write_text(again.stderr)
    assert f"resuming from checkpoint checkpoint-{killed_at}" in again.stderr
    steps = [json.loads(line)["step"] for line in (Path(run.output) / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # no step logged twice, none lost
    assert is_complete(run.output)


def test_cancel_saves_a_checkpoint_on_sigterm(home, tmp_path, synthetic_teacher):
    from pai_distil.run.registry import Registry
    from pai_distil_jobs.train.trainer import newest_checkpoint

    cots = tmp_path / "cots.jsonl"
    from pai_distil.core import oracle as teacher, world

    with open(cots, "w") as f:
        for p in world.generate_problems(40, 3):
            thought, _, solution = teacher.respond(p).partition("</think>")
            f.write(json.dumps({"problem": p.text, "thought": thought.replace("<think>", "").strip(),
                                "solution": solution.strip(), "correct": True}) + "\n")
    cfg = tmp_path / "st.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                   "train": {"max_steps": 5000, "batch_size": 4, "checkpoint_every": 1000}}))
    assert cli("submit", "slow-thinking", "-c", cfg, "-i", f"cots={cots}", "--detach").returncode == 0
    run = Registry().list(stage="slow-thinking")[0]
    wait_until(lambda: (Path(run.output) / "metrics.jsonl").exists())
    proc = cli("runs", "cancel", run.id)
    assert proc.returncode == 0, proc.stderr
    assert Registry().get(run.id).state == "cancelled"
    ckpt = newest_checkpoint(Path(run.work_dir) / "checkpoints")
    assert ckpt is not None and 0 < int(ckpt.name.split("-")[1]) < 1000
