"""`generate` on real-shaped data: benchmark rows, prompts per verifier, truncation, CoT refinement."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TEST_API_KEY, job_errors, run_job

from pai_distil.core import world

KEY_ENV = {"PAI_DISTIL_TEACHER_API_KEY": TEST_API_KEY}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def math500_file(tmp_path: Path, n: int = 6) -> Path:
    """MATH-500-shaped rows whose problems the synthetic teacher can solve."""
    f = tmp_path / "math500.jsonl"
    rows = [{"problem": p.text, "solution": "...", "answer": p.answer, "subject": "Arithmetic", "level": p.level,
             "unique_id": f"test/arith/{i}.json"} for i, p in enumerate(world.generate_problems(n, seed=3))]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def teacher_cfg(t, **kw) -> dict:
    return {"base_url": t.base_url, "concurrency": 3, "max_retries": 1, **kw}


def test_math500_rows_get_the_boxed_instruction_and_math_verdicts(synthetic_teacher, tmp_path):
    cfg = {"teacher": teacher_cfg(synthetic_teacher), "verbosity": [3]}
    out = tmp_path / "out"
    proc = run_job("generate", cfg, out, inputs={"problems": math500_file(tmp_path)}, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "cots.jsonl")
    assert len(rows) == 6 and all(r["correct"] and r["domain"] == "math" and r["source"] == "math500" for r in rows)
    assert all(r["truncated"] is False and r["max_tokens"] == 4096 for r in rows)
    user = read_jsonl(out / "sft.jsonl")[0]["messages"][0]["content"]
    assert user.endswith("put your final answer within \\boxed{}.")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_source"]["math500"]["correct"] == 6 and summary["truncated"] == 0


def test_truncation_is_recorded(synthetic_teacher, tmp_path):
    cfg = {"teacher": teacher_cfg(synthetic_teacher, max_tokens=6), "problems": {"n": 4, "seed": 1},
           "verbosity": [7], "max_bad_fraction": 1.0}
    out = tmp_path / "out"
    proc = run_job("generate", cfg, out, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "cots.jsonl")
    assert all(r["truncated"] and r["finish_reason"] == "length" and not r["correct"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truncated"] == 4 and summary["max_tokens"] == 6 and "4 cut off at max_tokens" in proc.stdout


def test_refine_rewrites_chains_shorter_and_reverifies(synthetic_teacher, tmp_path):
    first = tmp_path / "long"
    cfg = {"teacher": teacher_cfg(synthetic_teacher), "problems": {"n": 5, "seed": 4}, "verbosity": [8]}
    proc = run_job("generate", cfg, first, env=KEY_ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    long_rows = {r["id"]: r for r in read_jsonl(first / "cots.jsonl")}

    out = tmp_path / "short"
    cfg = {"teacher": teacher_cfg(synthetic_teacher), "verbosity": [1], "refine": {"direction": "shorter"}}
    proc = run_job("generate", cfg, out, inputs={"problems": first}, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "cots.jsonl")
    assert len(rows) == 5 and all(r["correct"] and r["refine"] == "shorter" for r in rows)
    for r in rows:
        src = long_rows[r["refined_from"]]
        assert r["id"] == f"{src['id']}-shorter-rv1" and r["problem_id"] == src["problem_id"]
        assert r["completion_tokens"] < src["completion_tokens"]
    assert json.loads((out / "summary.json").read_text())["refine"] == "shorter"


def test_refine_needs_chains_of_thought(synthetic_teacher, tmp_path):
    cfg = {"teacher": teacher_cfg(synthetic_teacher), "problems": {"n": 2, "seed": 1},
           "refine": {"direction": "longer"}}
    proc = run_job("generate", cfg, tmp_path / "out", env=KEY_ENV)
    assert proc.returncode == 2 and "refine rewrites existing chains of thought" in job_errors(proc)[0]
    assert synthetic_teacher.requests == 0


def test_omnithought_rows_can_be_refined(synthetic_teacher, tmp_path):
    f = tmp_path / "omni.jsonl"
    p = world.generate_problems(1, seed=9)[0]
    f.write_text(json.dumps({"question": p.text, "reasoning": [
        {"thought": "long " * 50, "solution": f"\\boxed{{{p.answer}}}", "verified": True,
         "Reasoning_Verbosity": {"level": 8}, "Cognitive_Difficulty": {"level": 3}}]}) + "\n")
    cfg = {"teacher": teacher_cfg(synthetic_teacher), "verbosity": [2], "refine": {"direction": "shorter"}}
    proc = run_job("generate", cfg, tmp_path / "out", inputs={"problems": f}, env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr
    (row,) = read_jsonl(tmp_path / "out" / "cots.jsonl")
    assert row["correct"] and row["answer"] == p.answer and row["original_words"] == 50
