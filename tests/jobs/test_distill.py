"""White-box and on-policy distillation: the top-k divergences (exact values), the chunked loss, and KD
runs of slow-thinking that keep the kill-and-resubmit guarantee and refuse what cannot work in one line."""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, job_errors, kill_after_a_checkpoint, metric_records, run_job

from pai_distil.core import oracle as teacher, world
from pai_distil_jobs.train.distill import coarsen, divergence, kd_losses

MICRO = {"max_steps": 6, "batch_size": 4, "learning_rate": 0.005, "warmup_steps": 1, "log_every": 1,
         "checkpoint_every": 3, "max_length": 128}


def cots(path: Path, n: int = 16, seed: int = 4) -> Path:
    with open(path, "w") as f:
        for p in world.generate_problems(n, seed, levels=[1]):
            thought, solution = world.split_thought(teacher.respond(p, 2))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    return path


# -- the loss ------------------------------------------------------------------------------------------


def _buckets(student: list[float], teacher: list[float], ids: list[int]):
    """By hand: student and teacher probabilities over [ids..., rest]."""
    ps = torch.softmax(torch.tensor(student), -1)
    pt = torch.tensor(teacher)
    s = [float(ps[i]) for i in ids]
    t = [float(pt[i]) for i in ids]
    return s + [1 - sum(s)], t + [1 - sum(t)]


def test_the_divergences_over_the_top_k_and_the_rest_have_their_exact_values():
    logits = [2.0, 1.0, 0.0, -1.0, 0.5]
    teacher_p = [0.1, 0.6, 0.2, 0.05, 0.05]
    ids = [1, 2]
    s, t = _buckets(logits, teacher_p, ids)
    got_s, got_t = coarsen(torch.tensor([logits]), torch.tensor([ids]),
                           torch.log(torch.tensor([[teacher_p[i] for i in ids]])), 1.0)
    assert got_s.exp()[0].tolist() == pytest.approx(s, abs=1e-6)
    assert got_t.exp()[0].tolist() == pytest.approx(t, abs=1e-6)
    forward = sum(b * math.log(b / a) for a, b in zip(s, t))
    reverse = sum(a * math.log(a / b) for a, b in zip(s, t))
    m = [0.5 * a + 0.5 * b for a, b in zip(s, t)]
    jsd = 0.5 * sum(b * math.log(b / c) for b, c in zip(t, m)) + 0.5 * sum(a * math.log(a / c) for a, c in zip(s, m))
    m3 = [0.3 * b + 0.7 * a for a, b in zip(s, t)]  # beta weighs the teacher
    jsd3 = 0.3 * sum(b * math.log(b / c) for b, c in zip(t, m3)) + 0.7 * sum(a * math.log(a / c) for a, c in zip(s, m3))
    assert float(divergence(got_s, got_t, "forward")) == pytest.approx(forward, rel=1e-5)
    assert float(divergence(got_s, got_t, "reverse")) == pytest.approx(reverse, rel=1e-5)
    assert float(divergence(got_s, got_t, "jsd", 0.5)) == pytest.approx(jsd, rel=1e-5)
    assert float(divergence(got_s, got_t, "jsd", 0.3)) == pytest.approx(jsd3, rel=1e-5)


def test_a_student_equal_to_its_teacher_has_zero_divergence_and_empty_slots_add_nothing():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    logp = torch.log_softmax(logits, -1)
    ids = torch.tensor([[2, 0, 3]])
    lps = logp.gather(1, ids)
    lps[0, 2] = float("-inf")  # an empty slot (an endpoint that returned fewer than k)
    s, t = coarsen(logits, ids, lps, 1.0)
    for kind in ("forward", "reverse", "jsd"):
        assert float(divergence(s, t, kind)) == pytest.approx(0.0, abs=1e-6)
    # temperature: the loss is the tempered divergence; equal distributions stay at zero
    s2, t2 = coarsen(logits, ids[:, :2], lps[:, :2], 2.0)
    assert torch.isfinite(s2).all() and torch.isfinite(t2).all()


def test_the_chunked_loss_and_its_gradient_equal_the_whole_computation(monkeypatch):
    torch.manual_seed(0)
    B, T, V, k = 2, 7, 11, 3
    logits = torch.randn(B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[:, :3] = -100
    labels[1, 6] = -100
    ids = torch.randint(0, V, (B, T, k))
    lps = torch.log_softmax(torch.randn(B, T, V), -1).gather(2, ids)
    ce, kd, n = kd_losses(logits, torch.eye(V), None, labels, ids, lps, 2.0, "jsd")
    (ce + kd).backward()
    grad = logits.grad.clone()
    logits.grad = None
    monkeypatch.setattr("pai_distil_jobs.train.lm_head_chunks.chunk_positions", lambda vocab: 2)
    ce2, kd2, n2 = kd_losses(logits, torch.eye(V), None, labels, ids, lps, 2.0, "jsd")
    (ce2 + kd2).backward()
    assert n == n2 == 7
    ce, kd, ce2, kd2 = (float(x.detach()) for x in (ce, kd, ce2, kd2))
    assert ce2 == pytest.approx(ce, rel=1e-6) and kd2 == pytest.approx(kd, rel=1e-6)
    assert torch.allclose(logits.grad, grad, atol=1e-6)
    # by hand: position t predicts labels[t + 1]
    sel = [(b, t) for b in range(B) for t in range(T - 1) if labels[b, t + 1] != -100]
    z = logits.detach()
    want = sum(float(torch.logsumexp(z[b, t], -1) - z[b, t, labels[b, t + 1]]) for b, t in sel)
    assert ce == pytest.approx(want, rel=1e-5)


# -- KD runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A cots file and the teacher-logits artifact of a micro teacher on it."""
    tmp = tmp_path_factory.mktemp("kd")
    path = cots(tmp / "cots.jsonl")
    proc = run_job("teacher-logits", {"teacher": {"model": "preset:micro", "seed": 7}, "student": {"model": "preset:micro"},
                                      "top_k": 8, "max_length": 128}, tmp / "logits", inputs={"cots": path})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path, tmp / "logits"


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_white_box_kd_trains_on_the_stored_top_k(scored, tmp_path):
    path, logits = scored
    cfg = {"student": {"model": "preset:micro"}, "train": MICRO, "distill": {"mode": "logits", "alpha": 0.0}}
    proc = run_job("slow-thinking", cfg, tmp_path / "kd", inputs={"cots": path, "teacher_logits": logits})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "white-box KD on the teacher's top-8" in proc.stdout
    records = _metrics(tmp_path / "kd")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["loss"] == pytest.approx(r["kd"], rel=1e-3) for r in records)  # alpha 0: the divergence alone
    assert all(r["tokens_per_s"] > 0 for r in records)
    assert records[-1]["kd"] < records[0]["kd"]


def test_kd_without_logits_of_its_rows_or_with_packing_is_one_line(scored, tmp_path):
    path, logits = scored
    other = cots(tmp_path / "other.jsonl", n=6, seed=5)
    cfg = {"student": {"model": "preset:micro"}, "train": MICRO, "distill": {"mode": "logits"}}
    proc = run_job("slow-thinking", cfg, tmp_path / "a", inputs={"cots": other, "teacher_logits": logits})
    assert proc.returncode == 2
    [line] = job_errors(proc)
    assert re.fullmatch(r"pai-distil job error: [1-6] of 6 training rows have no teacher logits in input "
                        r"'teacher_logits'; score this stage's `cots` input with the teacher-logits stage", line)
    packed = {**cfg, "train": {**MICRO, "packing": True}}
    proc = run_job("slow-thinking", packed, tmp_path / "b", inputs={"cots": path, "teacher_logits": logits})
    assert proc.returncode == 2 and "drop train.packing" in job_errors(proc)[0]


def test_on_policy_distillation_samples_and_the_teacher_scores_every_token(scored, tmp_path):
    path, _ = scored
    cfg = {"student": {"model": "preset:micro"}, "train": {**MICRO, "max_steps": 4},
           "distill": {"mode": "on-policy", "lmbda": 0.5, "top_k": 8, "max_new_tokens": 12,
                       "teacher": {"model": "preset:micro", "seed": 7}}}
    proc = run_job("slow-thinking", cfg, tmp_path / "op", inputs={"cots": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _metrics(tmp_path / "op")
    on = [r for r in records if r["on_policy"] == 1]
    assert on and len(on) < len(records)  # lmbda 0.5: some steps sample, some learn the rows
    assert all(r["loss"] == pytest.approx(r["kd"], rel=1e-3) and 1 <= r["sample_tokens"] <= 12 for r in on)


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(scored, tmp_path):
    from real_models import tiny_checkpoint

    path, _ = scored
    qwen = tiny_checkpoint(tmp_path / "qwen3")
    cfg = {"student": {"model": "preset:micro"}, "train": MICRO,
           "distill": {"mode": "on-policy", "teacher": {"model": str(qwen)}}}
    proc = run_job("slow-thinking", cfg, tmp_path / "op", inputs={"cots": path})
    assert proc.returncode == 2
    [line] = job_errors(proc)
    assert line.startswith(f"pai-distil job error: teacher {str(qwen)!r} has another tokenizer than student "
                           "'preset:micro'")


def cli(home: Path, *args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAI_DISTIL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pai_distil", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT, **kw)


@pytest.mark.parametrize("mode", ["logits", "on-policy"])
def test_a_killed_kd_run_resumes_from_its_checkpoint_and_learns_the_same(scored, tmp_path, monkeypatch, mode):
    from pai_distil.run.registry import Registry

    path, logits = scored
    home = tmp_path / "home"
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    d = ({"mode": "logits"} if mode == "logits" else
         {"mode": "on-policy", "lmbda": 0.5, "top_k": 8, "max_new_tokens": 10, "teacher": {"model": "preset:micro", "seed": 7}})
    cfg = tmp_path / "kd.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"}, "distill": d,
                                   "train": {**MICRO, "max_steps": 30, "checkpoint_every": 10}}))
    args = ("submit", "slow-thinking", "-c", cfg, "-i", f"cots={path}") + (
        ("-i", f"teacher_logits={logits}") if mode == "logits" else ())
    assert cli(home, *args, "--detach").returncode == 0
    run = Registry().list(stage="slow-thinking")[0]
    killed_at, lost = kill_after_a_checkpoint(run.id)
    assert lost and killed_at < 30

    again = cli(home, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint checkpoint-{killed_at}" in again.stderr
    records = metric_records(Path(run.output) / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))  # none twice, none lost
    for r in records:  # the steps run again learn exactly as the first time (on-policy: the same samples)
        if r["step"] in lost:
            for key in ("loss", "kd", "ce", "on_policy"):
                assert r[key] == pytest.approx(lost[r["step"]][key], abs=1e-4), (r, lost[r["step"]])


def test_the_learning_curve_continues_from_the_starting_checkpoint_steps(tmp_path):
    from pai_distil_jobs.stages.evaluate import learning_curve

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 50, "loss": 1.0}, {"step": 100, "heldout_accuracy": 0.25}, {"step": 200, "heldout_accuracy": 0.5}]))
    (tmp_path / "training_summary.json").write_text(json.dumps({"steps": 300, "start_step": 300}))
    assert learning_curve(tmp_path) == {"steps": [[400, 0.25], [500, 0.5]], "final_step": 600}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")
    assert learning_curve(tmp_path) is None  # no held-out checks: no curve


def test_vllm_rollouts_without_vllm_or_with_stored_logits_are_one_line(scored, tmp_path):
    from pydantic import ValidationError

    from pai_distil.core.config import Distill

    with pytest.raises(ValidationError, match="rollout vllm samples the student on on-policy steps"):
        Distill(mode="logits", rollout="vllm")
    path, _ = scored
    cfg = {"student": {"model": "preset:micro"}, "train": MICRO,
           "distill": {"mode": "on-policy", "rollout": "vllm", "teacher": {"model": "preset:micro", "seed": 7}}}
    proc = run_job("slow-thinking", cfg, tmp_path / "v", inputs={"cots": path})
    assert proc.returncode == 2
    assert job_errors(proc) == ["pai-distil job error: distill.rollout vllm needs vLLM, which this job image lacks; "
                                "use the GPU image (REGISTRY/pai-distil-gpu:TAG), or set distill.rollout hf"]
