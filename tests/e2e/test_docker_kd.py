"""Logit distillation on `--backend local`: teacher-logits, white-box KD and on-policy KD in Docker
containers give what the process backend gives (the image holds the new stages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file

from pai_distil.core import oracle as teacher, world

pytestmark = pytest.mark.slow
TRAIN = {"max_steps": 6, "batch_size": 4, "learning_rate": 0.005, "warmup_steps": 1, "log_every": 2,
         "checkpoint_every": 3, "max_length": 128}


def _pipeline(tmp_path: Path) -> Path:
    cots = tmp_path / "cots.jsonl"
    with open(cots, "w") as f:
        for p in world.generate_problems(12, 4, levels=[1]):
            thought, solution = world.split_thought(teacher.respond(p, 2))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    spec = {"name": "kd-local", "backend": "process", "stages": {
        "teacher": {"stage": "slow-thinking", "inputs": {"cots": str(cots)},
                    "config": {"student": {"model": "preset:micro", "seed": 1}, "train": TRAIN}},
        "logits": {"stage": "teacher-logits", "inputs": {"cots": str(cots), "teacher": "teacher"},
                   "config": {"student": {"model": "preset:micro"}, "top_k": 8, "max_length": 128, "shard_rows": 5}},
        "white-box": {"stage": "slow-thinking", "inputs": {"cots": str(cots), "teacher_logits": "logits"},
                      "config": {"student": {"model": "preset:micro"}, "train": TRAIN, "distill": {"mode": "logits"}}},
        "on-policy": {"stage": "slow-thinking", "inputs": {"cots": str(cots), "teacher": "teacher"},
                      "config": {"student": {"model": "preset:micro"}, "train": TRAIN,
                                 "distill": {"mode": "on-policy", "top_k": 8, "max_new_tokens": 8}}}}}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(path: Path, backend: str, home: Path) -> dict[str, Path]:
    env = {**os.environ, "PAI_DISTIL_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "run", str(path), "--backend", backend], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pai_distil.run.registry import Registry

    return {r.stage + ":" + Path(r.work_dir).name: Path(r.output) for r in Registry(home / "runs.sqlite").list()}


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _student(runs: dict[str, Path], kind: str) -> Path:
    """The slow-thinking output of one kind: sft (the teacher), white-box or on-policy (by its metrics)."""
    for key, out in runs.items():
        if key.startswith("slow-thinking"):
            records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            found = "sft" if "kd" not in records[0] else ("on-policy" if records[0]["on_policy"] else "white-box")
            if found == kind:
                return out
    raise AssertionError(f"no {kind} student among {sorted(runs)}")


@pytest.mark.timeout(1800)
def test_kd_stages_run_in_containers_as_in_processes(cpu_image, tmp_path):  # noqa: F811
    path = _pipeline(tmp_path)
    by_process, in_docker = _run(path, "process", tmp_path / "p"), _run(path, "local", tmp_path / "l")
    assert len(by_process) == len(in_docker) == 4
    logits = lambda runs: next(p for k, p in runs.items() if k.startswith("teacher-logits"))  # noqa: E731
    shards = sorted(p.name for p in logits(in_docker).glob("shard-*.safetensors"))
    assert shards and shards == sorted(p.name for p in logits(by_process).glob("shard-*.safetensors"))
    for name in shards:  # the same teacher, the same numbers (the metadata names the teacher by its path there)
        a, b = load_file(str(logits(in_docker) / name)), load_file(str(logits(by_process) / name))
        assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)
    for kind in ("sft", "white-box", "on-policy"):
        a, b = _student(by_process, kind), _student(in_docker, kind)
        la, lb = _losses(a), _losses(b)
        assert [s for s, _ in la] == [s for s, _ in lb] == [2, 4, 6]
        assert lb[-1][1] == pytest.approx(la[-1][1], rel=0.05)
