"""score: a judge rates every CoT sample — correctness (0/1), Reasoning Verbosity and Cognitive
Difficulty (0-9) — through any OpenAI-compatible endpoint; resumable like `generate`."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import openai

from pai_distil.core.config import ScoreConfig

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.cot_data import read_cots, require
from pai_distil_jobs.endpoints.judge_client import ask as ask_judge
from pai_distil_jobs.endpoints.resumable import Stopped, load_done, pending, run_pool

SCORED = "scored.jsonl"
SUMMARY = "summary.json"
MIN_ROWS_FOR_CHECK = 20


def run(ctx: JobContext) -> bool | None:
    cfg = ctx.parsed_config(ScoreConfig)
    path = ctx.input("cots")
    rows = read_cots(path)
    for n, row in enumerate(rows, 1):
        require(row, n, ("id", "problem", "thought", "solution"), f"input 'cots' ({path})")
    out = ctx.output / SCORED
    done, todo = pending(rows, lambda r: r["id"], out, "scored")
    log(f"score: judge {cfg.judge.model!r} at {cfg.judge.base_url} rates {len(todo)} samples "
        f"on {', '.join(cfg.dimensions)} ({len(done)} already scored)")
    unscored = {"rows": 0, "seen": 0}

    def check(row: dict) -> None:
        unscored["seen"] += 1
        unscored["rows"] += bool(row["unscored"])
        n = unscored["seen"]
        if (n >= MIN_ROWS_FOR_CHECK or n == len(todo)) and unscored["rows"] > cfg.max_unscored_fraction * n:
            raise JobError(f"the judge's answers cannot be read: {unscored['rows']} of {n} samples have a dimension "
                           f"without a score in range; check judge.model ({cfg.judge.model!r}) and judge.max_tokens")

    async def ask(c: openai.AsyncOpenAI, row: dict) -> dict:
        results = await asyncio.gather(*(ask_judge(c, cfg.judge, row, d) for d in cfg.dimensions))
        scored = dict(row)
        scored["verified"] = row.get("correct")
        missing = []
        for dim, (value, text) in zip(cfg.dimensions, results):
            if value is None:
                missing.append(dim)
                scored.setdefault("judge_raw", {})[dim] = text[:300]
            scored[dim] = value
        if "correct" in cfg.dimensions:
            scored["correct"] = bool(scored["correct"]) if scored["correct"] is not None else bool(row.get("correct"))
        scored["unscored"] = missing
        return scored

    try:
        asyncio.run(run_pool(todo, ask, cfg.judge, out, "score", total=len(rows), done=len(done), on_row=check))
    except Stopped:
        log("score: stopped by SIGTERM; rerun to resume")
        return False
    scored = load_done(out, "scored")
    summary = summarize([scored[r["id"]] for r in rows])
    (ctx.output / SUMMARY).write_text(json.dumps(summary, indent=1))
    log(f"score: {summary['samples']} samples, {summary['unscored']} with an unscored dimension, "
        f"judge agrees with the verifier on {summary['agreement_with_verifier']:.1%}")
    return None


def summarize(rows: list[dict]) -> dict:
    by_level: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_level[str((r.get("meta") or {}).get("level", "all"))].append(r)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    both = [r for r in rows if r.get("verified") is not None and r.get("correct") is not None]
    return {
        "samples": len(rows),
        "unscored": sum(bool(r.get("unscored")) for r in rows),
        "agreement_with_verifier": sum(r["verified"] == r["correct"] for r in both) / len(both) if both else 1.0,
        "per_level": {lv: {"samples": len(rs), "mean_rv": mean(r.get("rv") for r in rs),
                           "mean_cd": mean(r.get("cd") for r in rs)} for lv, rs in sorted(by_level.items())},
    }
