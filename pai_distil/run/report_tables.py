"""An evaluation report as rich tables: per model, overall and per difficulty level, and per source."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pai_distil.core.report import label, level_name, sort_levels, title_of


def table(report: dict, title: str = "evaluation") -> Table:
    """One row per model: accuracy and mean output tokens, overall and per difficulty level."""
    models = report["models"]
    levels = sort_levels({lv for m in models for lv in m["levels"]})
    t = Table(title=title_of(report, title), title_justify="left")
    t.add_column("model", style="bold", overflow="fold", min_width=16)
    t.add_column("overall", justify="right")
    for lv in levels:
        t.add_column(level_name(lv), justify="right")
    for m in models:
        row = [label(m), _cell(m["overall"])]
        row += [_cell(m["levels"][lv]) if lv in m["levels"] else "-" for lv in levels]
        t.add_row(*row)
    return t


def source_table(report: dict, title: str = "evaluation") -> Table | None:
    """One row per model, one column per source (benchmark file); None with a single source."""
    models = report["models"]
    sources = sorted({s for m in models for s in m.get("sources", {})})
    if len(sources) < 2:
        return None
    t = Table(title=f"{title}: per source (accuracy / mean output tokens)", title_justify="left")
    t.add_column("model", style="bold", overflow="fold", min_width=16)
    for s in sources:
        t.add_column(s, justify="right")
    for m in models:
        t.add_row(label(m), *[_cell(m["sources"][s]) if s in m.get("sources", {}) else "-" for s in sources])
    return t


def _cell(s: dict) -> str:
    return f"{s['accuracy']:.1%} / {s['mean_tokens']:.1f}"


def output_console() -> Console:
    """Stdout; when it is a file or a pipe, wide enough that no column is cut."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def render(report: dict, console: Console | None = None, title: str = "evaluation") -> None:
    console = console or output_console()
    console.print(table(report, title))
    by_source = source_table(report, title)
    if by_source is not None:
        console.print(by_source)
