"""`train.stop_at`: SFT ends once held-out accuracy reaches a target, checked every N steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import job_errors, run_job

from pai_distil.core.config import SlowThinkingConfig
from pai_distil.core import oracle as teacher, world


def level1_cots(tmp_path, n=400):
    rows = []
    for p in world.generate_problems(n, seed=31, levels=[1]):
        thought, solution = world.split_thought(teacher.respond(p, 1))
        rows.append({"id": p.id, "problem": p.text, "answer": p.answer, "thought": thought,
                     "solution": solution, "correct": True})
    path = tmp_path / "cots.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(accuracy, max_steps):
    return {"student": {"model": "preset:micro"},
            "train": {"max_steps": max_steps, "batch_size": 16, "learning_rate": 1e-2, "warmup_steps": 5,
                      "checkpoint_every": 20,
                      "stop_at": {"accuracy": accuracy, "every": 10, "max_new_tokens": 32,
                                  "problems": {"n": 40, "seed": 77, "levels": [1]}}}}


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_ends_when_the_target_is_reached(tmp_path):
    # 10%: the micro student reaches it by answering in the boxed format (guessing the digit),
    # within a few dozen steps; before that it scores 0.
    out = tmp_path / "out"
    proc = run_job("slow-thinking", config(0.1, 400), out, inputs={"cots": level1_cots(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["stopped_at_target"] is True and summary["steps"] < 400 and summary["steps"] % 10 == 0
    checks = [m for m in metrics(out) if "heldout_accuracy" in m]
    assert [m["step"] for m in checks] == list(range(10, summary["steps"] + 1, 10))
    assert checks[-1]["heldout_accuracy"] >= 0.1 > max(m["heldout_accuracy"] for m in checks[:-1])
    assert "target reached, training ends here" in proc.stdout
    assert (out / "model.safetensors").exists() and (out / "manifest.json").exists()


def test_an_unreached_target_trains_to_max_steps(tmp_path):
    out = tmp_path / "out"
    proc = run_job("slow-thinking", config(1.0, 25), out, inputs={"cots": level1_cots(tmp_path, 40)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary == {**summary, "steps": 25, "stopped_at_target": False}
    assert [m["step"] for m in metrics(out) if "heldout_accuracy" in m] == [10, 20]
    assert "held-out accuracy" in proc.stdout and "stop_at 100.0%" in proc.stdout


def test_two_processes_stop_at_the_same_step(tmp_path):
    """Rank 0 decides and every rank follows: no rank waits in a collective the others left."""
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(config(0.1, 400)))
    env = {**os.environ, "PAI_DISTIL_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "submit", "slow-thinking", "-c", str(cfg),
                           "-i", f"cots={level1_cots(tmp_path)}", "--nproc-per-node", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((Path(proc.stdout.strip()) / "training_summary.json").read_text())
    assert summary["stopped_at_target"] is True and summary["steps"] < 400
    assert proc.stderr.count("target reached") == 1  # logged by rank 0 alone


@pytest.mark.parametrize("bad, field", [({"accuracy": 0}, "accuracy"), ({"accuracy": 0.5, "every": 0}, "every"),
                                        ({"accuracy": 0.5, "problems": {"levels": [7]}}, "levels")])
def test_bad_stop_at_is_a_one_line_error(tmp_path, bad, field):
    cfg = {"train": {"max_steps": 5, "stop_at": bad}}
    proc = run_job("slow-thinking", cfg, tmp_path / "out", inputs={"cots": level1_cots(tmp_path, 8)})
    assert proc.returncode == 2 and field in "".join(job_errors(proc)) and "Traceback" not in proc.stderr


def test_stop_at_refuses_zero3():
    with pytest.raises(ValueError, match="ZeRO-3"):
        SlowThinkingConfig.model_validate({"train": {"stop_at": {"accuracy": 0.5}, "deepspeed": {"stage": 3}}})
