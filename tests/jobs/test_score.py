"""The judge: score parsing, the synthetic judge, and the score stage against a real server."""

from __future__ import annotations

import json

import pytest

from pai_distil.core.judging import SCALES, judge_prompt, parse_score
from pai_distil.synthetic import judge
from pai_distil.core import oracle as teacher, world

from conftest import job_errors, run_job


@pytest.mark.parametrize("text, expected", [
    ("Score: 7", 7),
    ("7/9", 7),
    ("<score>7</score>", 7),
    ("After reading the chain carefully I would give it a 7, since it is fairly detailed.", 7),
    ("**Score:** 6", 6),
    ("The score is 8.", 8),
    ("7 out of 9", 7),
    ("<think>maybe 3, maybe 5</think>Score: 4", 4),
    ("Score: 12", None),  # out of range
    ("Score: -1", None),
    ("I cannot rate this.", None),  # no number
    ("somewhere between 3 and 5", None),  # competing numbers: no guess
    ("", None),
    (None, None),
])
def test_parse_score(text, expected):
    assert parse_score(text, 0, 9) == expected


def test_parse_correctness_scale():
    assert parse_score("Score: 1", *SCALES["correct"]) == 1
    assert parse_score("Score: 5", *SCALES["correct"]) is None


def test_synthetic_judge_recovers_verbosity_and_difficulty():
    for p in world.generate_problems(30, 4):
        for rv in range(10):
            thought, _, solution = teacher.respond(p, rv).partition("</think>")
            user = judge_prompt("rv", p.text, p.answer, thought.replace("<think>", "").strip(), solution)[1]["content"]
            assert judge.score("rv", user) == rv
        user = judge_prompt("cd", p.text, p.answer, "", "")[1]["content"]
        assert judge.score("cd", user) == judge.LEVEL_CD[p.level]


def _cots(tmp_path, n=12, verbosities=(0, 3, 6)):
    rows = []
    for p in world.generate_problems(n, 9):
        for rv in verbosities:
            thought, solution = world.split_thought(teacher.respond(p, rv))
            rows.append({"id": f"{p.id}-rv{rv}", "problem_id": p.id, "problem": p.text, "answer": p.answer,
                         "thought": thought, "solution": solution, "correct": True, "requested_rv": rv,
                         "meta": p.to_row()["meta"]})
    path = tmp_path / "cots.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_score_stage_rates_every_sample_and_resumes(tmp_path, synthetic_teacher):
    cots, rows = _cots(tmp_path)
    cfg = {"judge": {"base_url": synthetic_teacher.base_url, "model": "judge", "max_retries": 1}}
    env = {"PAI_DISTIL_TEACHER_API_KEY": synthetic_teacher.api_key}
    out = tmp_path / "out"
    proc = run_job("score", cfg, out, inputs={"cots": cots}, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == len(rows)
    for r in scored:
        assert r["rv"] == r["requested_rv"] and r["cd"] == judge.LEVEL_CD[r["meta"]["level"]] and r["correct"]
    assert (out / "manifest.json").exists()

    # a rerun asks nothing again
    asked = synthetic_teacher.requests
    (out / "manifest.json").unlink()
    assert run_job("score", cfg, out, inputs={"cots": cots}, env=env).returncode == 0
    assert synthetic_teacher.requests == asked


def test_score_stage_fails_on_unreadable_judge(tmp_path, synthetic_teacher):
    # problems outside the synthetic world: the judge answers without a score
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"id": f"b{i}", "problem": "What is love?", "answer": "x",
                                        "thought": "", "solution": "none"}) + "\n" for i in range(25)))
    cfg = {"judge": {"base_url": synthetic_teacher.base_url, "model": "judge"}}
    proc = run_job("score", cfg, tmp_path / "out", inputs={"cots": path},
                   env={"PAI_DISTIL_TEACHER_API_KEY": synthetic_teacher.api_key})
    assert proc.returncode == 2
    (line,) = job_errors(proc)
    assert "cannot be read" in line
    assert not (tmp_path / "out" / "manifest.json").exists()
