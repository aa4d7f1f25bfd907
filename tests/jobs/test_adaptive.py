"""Adaptive thinking: ThoughtX selection and curriculum, ThoughtY mixing, and both stages end to end."""

from __future__ import annotations

import json

import pytest
from conftest import job_errors, run_job

from pai_distil.core.config import AdaptiveThinkingConfig, RVPolicy
from pai_distil.synthetic import judge
from pai_distil.core import oracle as teacher, world
from pai_distil_jobs.data.cot_data import EMPTY_THOUGHT
from pai_distil_jobs.stages.adaptive_thinking import build_y, order_rows, select_x


def scored_rows(n=30, verbosities=(0, 2, 4, 6), seed=5):
    rows = []
    for p in world.generate_problems(n, seed):
        for rv in verbosities:
            thought, solution = world.split_thought(teacher.respond(p, rv))
            rows.append({"id": f"{p.id}-rv{rv}", "problem_id": p.id, "problem": p.text, "answer": p.answer,
                         "thought": thought, "solution": solution, "correct": True, "requested_rv": rv,
                         "rv": rv, "cd": judge.LEVEL_CD[p.level], "meta": {"level": p.level}})
    return rows


def group(rows):
    out = {}
    for r in rows:
        out.setdefault(r["problem_id"], []).append(r)
    return out


def test_select_x_fits_verbosity_to_difficulty():
    policy = RVPolicy(intercept=-1.5, slope=1.0, tolerance=1.0)
    selected, stats = select_x(group(scored_rows()), policy)
    assert len(selected) == 30  # one per problem
    by_cd = {s["cd"]: s for s in stats}
    assert by_cd[2]["mean_rv"] == 0 and by_cd[5]["mean_rv"] == 4 and by_cd[8]["mean_rv"] == 6
    assert all(abs(r["rv"] - policy.target(r["cd"])) <= 1.0 for r in selected)


def test_select_x_respects_correctness_caps_and_minimum():
    rows = scored_rows()
    for r in rows:
        r["correct"] = r["rv"] != 0  # the only fitting chain for easy problems is wrong
    selected, stats = select_x(group(rows), RVPolicy(intercept=-1.5, slope=1.0, tolerance=0.6, min_per_bin=0))
    assert {s["cd"]: s["selected"] for s in stats}[2] == 0
    from pai_distil.core.contract import JobError

    with pytest.raises(JobError, match="CD level 2"):
        select_x(group(rows), RVPolicy(intercept=-1.5, slope=1.0, tolerance=0.6, min_per_bin=1))
    capped, _ = select_x(group(scored_rows()), RVPolicy(intercept=-1.5, slope=1.0, max_per_bin=3))
    assert len(capped) == 9


def test_curriculum_orders_easy_to_hard():
    selected, _ = select_x(group(scored_rows()), RVPolicy(intercept=-1.5, slope=1.0))
    cds = [r["cd"] for r in order_rows(selected, "easy-to-hard", seed=1)]
    assert cds == sorted(cds)
    assert [r["cd"] for r in order_rows(selected, "mixed", seed=1)] != sorted(cds)


def test_build_y_mixes_thinking_and_direct_answers():
    cfg = AdaptiveThinkingConfig(variant="y", no_think_ratio=1.0, soft_switch_ratio=0.5, think_verbosity=[6])
    rows, counts = build_y(group(scored_rows()), cfg)
    assert counts["thinking"] == 30 and len(rows) == 60
    direct = [r for r in rows if r["messages"][1]["content"].startswith(EMPTY_THOUGHT)]
    assert len(direct) == 30
    flagged = [r for r in direct if r.get("chat_template_kwargs") == {"enable_thinking": False}]
    soft = [r for r in direct if r["messages"][0]["content"].endswith("/no_think")]
    assert len(flagged) + len(soft) == 30 and flagged and soft
    thinking = [r for r in rows if r not in direct]
    assert all("We start with" in r["messages"][1]["content"] for r in thinking)  # RV 6 chains


def _write(tmp_path, rows):
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("variant", ["x", "y"])
def test_adaptive_stage_trains_a_student(tmp_path, variant):
    path = _write(tmp_path, scored_rows(n=24))
    cfg = {"variant": variant, "student": {"model": "preset:micro"},
           "train": {"max_steps": 6, "batch_size": 4, "checkpoint_every": 3}}
    out = tmp_path / "out"
    proc = run_job("adaptive-thinking", cfg, out, inputs={"cots": path}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "manifest.json").exists()
    assert ("ThoughtX selection" if variant == "x" else "ThoughtY training mix") in proc.stdout
    # variant y trained /no_think rows: the checkpoint says so, for servers and evaluate (chat_template.thinking_switch)
    assert (out / "thinking_switch.json").exists() == (variant == "y")


def test_variant_x_needs_scores(tmp_path):
    rows = scored_rows(n=4)
    for r in rows:
        del r["rv"]
    proc = run_job("adaptive-thinking", {"variant": "x", "student": {"model": "preset:micro"}},
                   tmp_path / "out", inputs={"cots": _write(tmp_path, rows)})
    assert proc.returncode == 2
    (line,) = job_errors(proc)
    assert "'rv' is missing" in line


def test_adaptive_stages_distil_white_box_and_on_policy(tmp_path):
    """Variant x learns the teacher's stored top-k of the rows it selects (teacher-logits scored the
    whole input); variant y, whose no-think rows no stored scoring has, distils on-policy."""
    path = _write(tmp_path, scored_rows(n=12))
    teacher = {"model": "preset:micro", "seed": 7}
    proc = run_job("teacher-logits", {"teacher": teacher, "student": {"model": "preset:micro"}, "top_k": 8},
                   tmp_path / "logits", inputs={"cots": path}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1}
    for variant, distill, inputs in (
            ("x", {"mode": "logits", "alpha": 0.5}, {"teacher_logits": tmp_path / "logits"}),
            ("y", {"mode": "on-policy", "lmbda": 1.0, "top_k": 8, "max_new_tokens": 8, "teacher": teacher}, {})):
        out = tmp_path / variant
        proc = run_job("adaptive-thinking", {"variant": variant, "student": {"model": "preset:micro"}, "train": train,
                                             "distill": distill}, out, inputs={"cots": path, **inputs}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        assert all(r["kd"] > 0 for r in records)
        if variant == "y":
            assert all(r["on_policy"] == 1 and r["loss"] == pytest.approx(r["kd"], rel=1e-3) for r in records)


def test_variant_y_with_stored_logits_is_refused_naming_the_fix():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="variant y trains direct-answer rows .* use mode on-policy"):
        AdaptiveThinkingConfig(variant="y", distill={"mode": "logits"})
    assert AdaptiveThinkingConfig(variant="x", distill={"mode": "logits"}).distill.mode == "logits"
