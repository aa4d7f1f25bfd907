"""Evaluation reports: the statistics and the chart, written by the evaluate job and redrawn by the client.

matplotlib is imported only when a chart is drawn, so the client starts fast. The tables the CLI
prints live beside the CLI (`pai_distil/run/report_tables.py`).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

REPORT = "report.json"
CHART = "report.png"


def summarize(records: list[dict]) -> dict:
    """Statistics of prediction records ({"id", "level", "source", "correct", "tokens", "truncated"}),
    overall, per level and per source.

    With several samples per problem, `accuracy` is pass@1 averaged over the samples (the unbiased
    estimate) and `pass_at_n` the share of problems with at least one correct sample.
    """

    def stats(rs: list[dict]) -> dict:
        n = len(rs)
        correct = sum(bool(r["correct"]) for r in rs)
        tokens = sum(r["tokens"] for r in rs)
        by_problem: dict[str, bool] = {}
        for i, r in enumerate(rs):
            key = str(r.get("id", i))
            by_problem[key] = by_problem.get(key, False) or bool(r["correct"])
        return {
            "n": n,
            "problems": len(by_problem),
            "accuracy": correct / n if n else 0.0,
            "pass_at_n": sum(by_problem.values()) / len(by_problem) if by_problem else 0.0,
            "mean_tokens": tokens / n if n else 0.0,
            "tokens_per_correct": tokens / correct if correct else None,
            "truncated": sum(bool(r["truncated"]) for r in rs) / n if n else 0.0,
        }

    by_level: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_level[str(r["level"])].append(r)
        if r.get("source") is not None:
            by_source[str(r["source"])].append(r)
    return {"overall": stats(records), "levels": {lv: stats(by_level[lv]) for lv in sort_levels(by_level)},
            "sources": {s: stats(by_source[s]) for s in sorted(by_source)}}


def sort_levels(levels) -> list[str]:
    """Numeric levels in numeric order, then named ones (easy, medium, hard, all) in that order."""
    named = {"easy": 0, "medium": 1, "hard": 2, "all": 9}
    return sorted(levels, key=lambda lv: (0, int(lv), "") if str(lv).isdigit() else (1, named.get(str(lv), 5), str(lv)))


def load(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / REPORT
    return json.loads(p.read_text())


def label(m: dict) -> str:
    """A model's name, with its thinking mode when it was set."""
    mode = m.get("enable_thinking")
    return m["name"] if mode is None else f"{m['name']} (thinking {'on' if mode else 'off'})"


def title_of(report: dict, title: str) -> str:
    samples = report.get("samples", 1)
    what = f"pass@1 over {samples} samples" if samples > 1 else "accuracy"
    return f"{title}: {report['n_problems']} held-out problems ({what} / mean output tokens)"


# -- chart ----------------------------------------------------------------------------------------


def chart_png(report: dict) -> bytes:
    """Left: accuracy against mean output tokens per model; right: mean output tokens per difficulty
    level per model (grouped bars). Deterministic bytes for the same report and matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    levels = sort_levels({lv for m in models for lv in m["levels"]})
    colors = plt.get_cmap("tab10")
    markers = "osD^vP*Xh<>"
    curves = [m for m in models if m.get("curve")]
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(19.5 if curves else 13, 5.2), constrained_layout=True)
    left, right = axes[0], axes[1]
    if curves:
        _curves(axes[2], models, colors, markers)

    xmax = max([m["overall"]["mean_tokens"] for m in models] + [1.0])
    near: dict[tuple, int] = defaultdict(int)  # models often sit on one spot (untrained ones at 0%)
    for i, m in enumerate(models):
        x, y = m["overall"]["mean_tokens"], 100 * m["overall"]["accuracy"]
        left.scatter([x], [y], s=90, color=colors(i % 10), marker=markers[i % len(markers)], label=label(m),
                     zorder=3, edgecolors="black", linewidths=0.5)
        spot = (round(10 * x / xmax), round(y / 5))
        left.annotate(m["name"], (x, y), textcoords="offset points", xytext=(8, 6 + 12 * near[spot]), fontsize=9)
        near[spot] += 1
    left.set_xlim(0, xmax * 1.2)
    left.set_ylim(-5, 115)
    left.set_xlabel("mean output tokens per answer (tokens)")
    samples = report.get("samples", 1)
    left.set_ylabel(f"accuracy (pass@1{f', {samples} samples' if samples > 1 else ''}, %)")
    left.set_title("accuracy vs. output length")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="best", title="model")

    width = 0.8 / max(1, len(models))
    top = max([s["mean_tokens"] for m in models for s in m["levels"].values()] + [1.0])
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(levels))]
        heights = [m["levels"][lv]["mean_tokens"] if lv in m["levels"] else 0.0 for lv in levels]
        right.bar(xs, heights, width, color=colors(i % 10), label=label(m), edgecolor="black", linewidth=0.4)
    right.set_ylim(0, top * (1.25 + 0.07 * len(models)))  # headroom for the legend
    right.set_xticks(range(len(levels)), [level_name(lv) for lv in levels])
    right.set_xlabel("difficulty level")
    right.set_ylabel("mean output tokens per answer (tokens)")
    right.set_title("output length per difficulty level")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=8, loc="upper left", title="model", ncol=2 if len(models) > 3 else 1)
    fig.suptitle(title_of(report, "evaluation"), fontsize=11)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _curves(ax, models: list[dict], colors, markers) -> None:
    """Held-out accuracy during training per model (stop_at checks), ending at the evaluated accuracy."""
    for i, m in enumerate(models):
        if not m.get("curve"):
            continue
        steps = m["curve"]["steps"] + [[m["curve"]["final_step"], m["overall"]["accuracy"]]]
        ax.plot([s for s, _ in steps], [100 * a for _, a in steps], color=colors(i % 10),
                marker=markers[i % len(markers)], markersize=5, label=m["name"])
    ax.set_ylim(-5, 105)
    ax.set_xlabel("training step (continued from the starting checkpoint's)")
    ax.set_ylabel("held-out accuracy during training (%)")
    ax.set_title("learning curves (last point: this evaluation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def level_name(lv: str) -> str:
    return f"level {lv}" if str(lv).isdigit() else ("no level" if lv == "all" else str(lv))


def write_chart(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(chart_png(report))
    return path
