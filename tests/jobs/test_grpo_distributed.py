"""The grpo stage on two processes (torchrun, gloo on CPU) against one: every rank reads the same problems,
TRL splits each step's completions over the ranks and gathers their rewards, rank 0 alone logs and writes the
metrics and the summary; the checkpoint is the one-process one in format."""

from __future__ import annotations

import json

from conftest import run_job
from test_reward_distributed import tensors
from test_reward_grpo import grpo_config, micro_reward_model, micro_student  # noqa: F401 - fixtures, shared


def test_grpo_on_two_processes_logs_and_saves_as_one(tmp_path, micro_student, micro_reward_model):  # noqa: F811
    runs, logs = {}, {}
    for procs in (1, 2):
        out = runs[procs] = tmp_path / f"grpo-{procs}"
        proc = run_job("grpo", grpo_config(kl_coef=0.05), out, timeout=600, env={"NPROC_PER_NODE": str(procs)},
                       inputs={"student": micro_student, "reward_model": micro_reward_model})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        logs[procs] = proc.stdout
        assert proc.stdout.count("grpo: 16 problems") == proc.stdout.count("grpo: accuracy") == 1  # rank 0 alone
        assert proc.stdout.count("reached max_completion_length=6") == 1
        assert f"on {procs} processes" in proc.stdout and "reference in float32" in proc.stdout
        assert f"{8 // procs} completions a micro-batch x 1 accumulation" in proc.stdout  # 2 prompts x 4, split
    assert [line.split(" lr ")[0].split(" loss ")[0] for line in logs[1].splitlines() if line.startswith("step ")] == \
        [line.split(" lr ")[0].split(" loss ")[0] for line in logs[2].splitlines() if line.startswith("step ")]

    one, two = runs[1], runs[2]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert tensors(one / "model.safetensors") == tensors(two / "model.safetensors")
    assert json.loads((one / "config.json").read_text()) == json.loads((two / "config.json").read_text())
    records = [[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] for out in (one, two)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == [1, 2, 3, 4]
    for a, b in zip(*records):  # the same metrics, over all of a step's completions (gathered from the ranks)
        assert set(a) == set(b) and {"reward", "accuracy", "length", "kl", "truncated", "rm_score"} <= set(b)
        assert b["length"] == a["length"] == 6 and b["truncated"] == 1.0
    summaries = [json.loads((out / "summary.json").read_text()) for out in (one, two)]
    assert summaries[0].keys() == summaries[1].keys() and summaries[1]["steps"] == 4
