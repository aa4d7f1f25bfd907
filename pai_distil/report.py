"""Evaluation reports: the statistics, and their rendering as a rich table (client side, no torch)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPORT = "report.json"


def summarize(records: list[dict]) -> dict:
    """accuracy, mean output tokens and tokens per correct answer of prediction records
    ({"level", "correct", "tokens", "truncated"}), overall and per level."""

    def stats(rs: list[dict]) -> dict:
        n = len(rs)
        correct = sum(r["correct"] for r in rs)
        tokens = sum(r["tokens"] for r in rs)
        return {
            "n": n,
            "accuracy": correct / n if n else 0.0,
            "mean_tokens": tokens / n if n else 0.0,
            "tokens_per_correct": tokens / correct if correct else None,
            "truncated": sum(r["truncated"] for r in rs) / n if n else 0.0,
        }

    by_level: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_level[str(r["level"])].append(r)
    return {"overall": stats(records), "levels": {lv: stats(by_level[lv]) for lv in sorted(by_level)}}


def load(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / REPORT
    return json.loads(p.read_text())


def table(report: dict, title: str = "evaluation") -> Table:
    """One row per model: accuracy and mean output tokens, overall and per difficulty level."""
    models = report["models"]
    levels = sorted({lv for m in models for lv in m["levels"]})
    t = Table(title=f"{title}: {report['n_problems']} held-out problems (accuracy / mean output tokens)",
              title_justify="left")
    t.add_column("model", style="bold", no_wrap=True)
    t.add_column("overall", justify="right", no_wrap=True)
    for lv in levels:
        t.add_column(f"level {lv}", justify="right", no_wrap=True)
    for m in models:
        row = [m["name"], _cell(m["overall"])]
        row += [_cell(m["levels"][lv]) if lv in m["levels"] else "-" for lv in levels]
        t.add_row(*row)
    return t


def _cell(s: dict) -> str:
    return f"{s['accuracy']:6.1%} / {s['mean_tokens']:5.1f}"


def render(report: dict, console: Console | None = None, title: str = "evaluation") -> None:
    (console or Console()).print(table(report, title))
