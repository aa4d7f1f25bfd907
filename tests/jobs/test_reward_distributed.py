"""The reward-model stage on two processes (torchrun, gloo on CPU) against one: rank 0 alone samples the
student and asks the judge, every rank trains on the same pairs, and the checkpoint is the one-process
one in format, with held-out accuracy in the same range."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from conftest import run_job
from test_reward_grpo import micro_student, noisy_cots  # noqa: F401 - a fixture and its data, shared

CONFIG = {"student_samples": {"per_problem": 1, "max_new_tokens": 16}, "eval_fraction": 0.25, "min_margin": 0.1,
          "train": {"max_steps": 8, "batch_size": 4, "checkpoint_every": 4, "log_every": 1}}


def tensors(path) -> dict:
    """name -> (shape, dtype) of a safetensors file, and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()} | {
            "metadata": f.metadata()}


def test_reward_model_on_two_processes_matches_one(teacher_factory, tmp_path, micro_student):  # noqa: F811
    cots, t = noisy_cots(teacher_factory, tmp_path, n=16)
    cfg = {**CONFIG, "judge": {"base_url": t.base_url, "model": "judge", "max_tokens": 64}}
    asked, runs = {}, {}
    for procs in (1, 2):
        before = t.app.state.stats.requests
        out = runs[procs] = tmp_path / f"rm-{procs}"
        proc = run_job("reward-model", cfg, out, inputs={"cots": cots, "student": micro_student}, timeout=600,
                       env={"PAI_DISTIL_TEACHER_API_KEY": t.api_key, "NPROC_PER_NODE": str(procs)})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        asked[procs] = t.app.state.stats.requests - before
        assert proc.stdout.count("held-out pairwise accuracy") == 1  # rank 0 alone evaluates and logs
        assert f"batch 4 = {4 // procs} x 1 accumulation" in proc.stdout  # each rank trains on its share
    assert asked[1] == asked[2] > 0  # the judge was asked once per candidate, not once per rank

    one, two = runs[1], runs[2]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for name in ("candidates.jsonl", "pairs.jsonl", "student_samples.jsonl"):
        assert (one / name).read_text() == (two / name).read_text(), name
    for name in ("model.safetensors", "reward_head.safetensors"):
        assert tensors(one / name) == tensors(two / name), name
    assert json.loads((one / "config.json").read_text()) == json.loads((two / "config.json").read_text())
    # the same global batches, split over the ranks: the same losses and metrics (gathered), the same head
    records = [[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] for out in (one, two)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == list(range(1, 9))
    for a, b in zip(*records):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3) and a["pair_accuracy"] == b["pair_accuracy"]
        assert a["chosen_nll"] == pytest.approx(b["chosen_nll"], abs=1e-3)
    heads = [load_file(str(out / "reward_head.safetensors")) for out in (one, two)]
    assert all(torch.allclose(heads[0][k], heads[1][k], atol=1e-4) for k in heads[0])

    reports = [json.loads((out / "report.json").read_text()) for out in (one, two)]
    accuracy = [r["held_out_pairs"]["overall"]["accuracy"] for r in reports]
    assert reports[0]["held_out_pairs"]["overall"]["pairs"] == reports[1]["held_out_pairs"]["overall"]["pairs"] > 0
    assert abs(accuracy[0] - accuracy[1]) <= 0.1, accuracy
    assert reports[0]["steps"] == reports[1]["steps"] == 8
    stats = [json.loads((out / "reward_stats.json").read_text()) for out in (one, two)]
    assert stats[0].keys() == stats[1].keys()

    from pai_distil_jobs.train.reward import RewardScorer

    pair = json.loads((two / "pairs.jsonl").read_text().splitlines()[0])
    scores = [RewardScorer(out).score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]]) for out in (one, two)]
    assert all(abs(a - b) < 0.5 for a, b in zip(*scores)), scores  # standardised: the same model, trained apart
