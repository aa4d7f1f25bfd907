"""`pai-distil runs`: list, inspect, follow and cancel runs recorded in the run registry."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pai_distil.run.registry import STATES, Registry, RunRecord

STATE_STYLE = {"queued": "dim", "running": "blue", "succeeded": "green", "cached": "cyan",
               "failed": "red", "cancelled": "yellow"}


def _console() -> Console:
    """A terminal's width; piped output is not wrapped, so lines stay whole for grep."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def _state(record: RunRecord) -> Text:
    return Text(record.state, style=STATE_STYLE.get(record.state, ""))


def metrics_summary(output: str | None) -> str | None:
    """`step N, loss X (M records)` from the last logged step of output/metrics.jsonl."""
    if not output or not (path := Path(output) / "metrics.jsonl").is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    if not rows:
        return None
    last = next((r for r in reversed(rows) if "step" in r), rows[-1])
    parts = [f"{k} {last[k]:.4g}" if isinstance(last[k], float) else f"{k} {last[k]}"
             for k in ("step", "loss") if k in last]
    return f"{', '.join(parts) or 'no step/loss'} ({len(rows)} records)"


@click.group()
def runs() -> None:
    """List, inspect, follow and cancel runs."""


@runs.command("list")
@click.option("--stage", help="only runs of this stage")
@click.option("--state", type=click.Choice(STATES), help="only runs in this state")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="newest N runs")
def list_runs(stage: str | None, state: str | None, limit: int) -> None:
    """Recorded runs, newest first."""
    records = Registry().list(limit=limit, stage=stage, state=state)
    if not records:
        click.echo("no runs yet; start one with `pai-distil submit`")
        return
    table = Table(box=None, pad_edge=False)
    rows = [(r.id, r.stage, r.backend, _state(r), _when(r.created_at), _duration(r.duration), r.output or "-")
            for r in records]
    # ids and states are what users copy and grep: never shorten them; only the output path folds
    for i, column in enumerate(("id", "stage", "backend", "state", "created", "duration")):
        table.add_column(column, no_wrap=True, min_width=max(len(column), *(len(str(row[i])) for row in rows)))
    table.add_column("output", overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


@runs.command("show")
@click.argument("run")
def show(run: str) -> None:
    """Every recorded field of RUN (an id or a unique prefix of one)."""
    r = Registry().get(run)
    console = _console()
    rows = [("id", r.id), ("stage", r.stage), ("backend", r.backend), ("state", _state(r)),
            ("pipeline", r.pipeline), ("created", _when(r.created_at)), ("started", _when(r.started_at)),
            ("finished", _when(r.finished_at)), ("duration", _duration(r.duration)), ("exit code", r.exit_code),
            ("error", Text(r.error, style="red") if r.error else None), ("output", r.output),
            ("work dir", r.work_dir), ("log", r.log_path), ("cache key", r.cache_key),
            ("supervisor pid", r.supervisor_pid), ("job pid", r.job_pid), ("metrics", metrics_summary(r.output))]
    if r.backend == "pai":
        from ..backends.pai import attempts_line

        rows.insert(5, ("attempts", attempts_line(r.id)))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else Text("-" if value is None else str(value)))
    console.print(table)


@runs.command("logs")
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the run ends")
def logs(run: str, follow: bool) -> None:
    """The log of RUN, as the job wrote it."""
    from pai_distil.run.follow import tail_log

    registry = Registry()
    record = registry.get(run)
    if follow:  # a DLC job whose supervisor died gets a new one, or the log would never grow or end
        from ..backends import get_backend

        record = get_backend(record.backend, registry).attach(record)
    tail_log(record, follow=follow, registry=registry)


@runs.command("attach")
@click.argument("run")
def attach(run: str) -> None:
    """Follow RUN again until it ends (after Ctrl-C, a closed terminal or a reboot); a pai run whose
    supervisor is gone gets a new one. Ctrl-C detaches again."""
    from pai_distil.core.errors import RunFailed
    from pai_distil.run.follow import follow

    from ..backends import get_backend

    registry = Registry()
    record = get_backend(registry.get(run).backend, registry).attach(registry.get(run))
    if not record.terminal:
        record = follow(record.id, registry=registry, console=Console(stderr=True, highlight=False))
    if record.state not in ("succeeded", "cached"):
        raise RunFailed(f"run {record.id} ({record.stage}) {record.state}: {record.error or record.exit_code}")
    click.echo(record.output)


@runs.command("pull")
@click.argument("run")
@click.option("--to", "dest", type=click.Path(file_okay=False), help="where to put it [default: the run's work dir]")
def pull(run: str, dest: str | None) -> None:
    """Bring the output of a pai RUN home from OSS (resumable, checked against its manifest)."""
    from ..backends.pai import pull_output

    registry = Registry()
    record = registry.get(run)
    click.echo(pull_output(record, Path(dest) if dest else None, registry))


@runs.command("cancel")
@click.argument("run")
def cancel(run: str) -> None:
    """Stop RUN; a training job saves a checkpoint first, and a rerun resumes from it."""
    from ..backends import get_backend

    registry = Registry()
    record = registry.get(run)
    if record.terminal:
        click.echo(f"run {record.id} already {record.state}; nothing to cancel")
        return
    click.echo(f"cancelling run {record.id} ...")
    record = get_backend(record.backend).cancel(record)
    click.echo(f"run {record.id} {record.state}" + (f": {record.error}" if record.error else ""))


COMMANDS = [runs]
