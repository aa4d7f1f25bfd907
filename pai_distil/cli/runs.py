"""`pai-distil runs`: list, inspect, follow, cancel and remove runs recorded in the run registry."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pai_distil.run import progress as run_progress
from pai_distil.run.registry import STATES, Registry, RunRecord

STATE_STYLE = {"queued": "dim", "running": "blue", "succeeded": "green", "cached": "cyan",
               "failed": "red", "cancelled": "yellow"}


GAP = 2  # between two columns of a borderless table
OUTPUT_MIN = 24  # the output column is shortened, never dropped: optional columns leave it this much
OUTPUT_LEAST = 12  # and the id, state and duration at least this much
OPTIONAL = ("created", "backend", "stage")  # shown while they fit, in this order (the id starts with the stage)


def _console() -> Console:
    """A terminal's width, or $COLUMNS; piped output is not wrapped, so lines stay whole for grep."""
    return Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 1000)


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


def record_json(record: RunRecord) -> dict:
    """A run as `--json` prints it: every recorded field, its duration and its progress."""
    now = run_progress.from_log(record.log_path, record.started_at, record.state == "running")
    return {**asdict(record), "duration": record.duration, "progress": now.as_dict() if now else None}


def progress_line(now: run_progress.Progress | None) -> str | None:
    """`step 20/100 (20.0 %), loss 1.25, 900 tok/s` for `runs show`."""
    if now is None:
        return None
    name = "step" if now.task == run_progress.TRAIN_TASK else now.task
    line = f"{name} {now.done}/{now.total} ({now.percent:.1f} %)"
    if now.loss is not None:
        line += f", loss {now.loss:.4g}"
    if now.tokens_per_s is not None:
        line += f", {now.tokens_per_s:.0f} tok/s"
    return line


def _short_when(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _fit_columns(records: list[RunRecord], width: int) -> tuple[list[str], list[list]]:
    """The columns of `runs list` that fit `width`: id, state, duration and output always (the output
    shortened), then created (shortened before it is dropped), backend and stage while they fit."""
    cells = {"id": [r.id for r in records], "stage": [r.stage for r in records],
             "backend": [r.backend for r in records], "state": [_state(r) for r in records],
             "created": [_when(r.created_at) for r in records], "duration": [_duration(r.duration) for r in records],
             "output": [r.output or "-" for r in records]}
    wide = {name: max(len(name), *(len(str(v)) for v in values)) for name, values in cells.items()}
    chosen = ["id", "state", "duration"]
    used = sum(wide[c] for c in chosen) + GAP * len(chosen) + min(wide["output"], OUTPUT_MIN)
    for name in OPTIONAL:
        if name == "created" and used + wide[name] + GAP > width:
            cells[name] = [_short_when(r.created_at) for r in records]
            wide[name] = max(len(name), *(len(v) for v in cells[name]))
        if used + wide[name] + GAP <= width:
            chosen.append(name)
            used += wide[name] + GAP
    room = max(OUTPUT_LEAST, width - (used - min(wide["output"], OUTPUT_MIN)))
    cells["output"] = [_shorten(v, room) for v in cells["output"]]
    columns = [c for c in cells if c in chosen or c == "output"]
    return columns, [[cells[c][i] for c in columns] for i in range(len(records))]


def _shorten(path: str, room: int) -> str:
    """`path` in `room` characters: `~` for the home directory, then only its end after `…`."""
    home = str(Path.home())
    if len(path) > room and home != "/" and path.startswith(home + "/"):
        path = "~" + path[len(home):]
    return path if len(path) <= room else "…" + path[len(path) - room + 1:]


@click.group()
def runs() -> None:
    """List, inspect, follow, cancel and remove runs."""


@runs.command("list")
@click.option("--stage", help="only runs of this stage")
@click.option("--state", type=click.Choice(STATES), help="only runs in this state")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="newest N runs")
@click.option("--json", "as_json", is_flag=True, help="print the runs as a JSON list (every field, unshortened)")
def list_runs(stage: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Recorded runs, newest first; columns that do not fit the terminal are dropped (stage, backend,
    created) and the output path is shortened, never the id, state or duration."""
    records = Registry().list(limit=limit, stage=stage, state=state)
    if as_json:
        click.echo(json.dumps([record_json(r) for r in records], indent=1))
        return
    if not records:
        click.echo("no runs yet; start one with `pai-distil submit`")
        return
    console = _console()
    columns, rows = _fit_columns(records, console.width)
    table = Table(box=None, pad_edge=False)
    for column in columns:  # ids and states are what users copy and grep: never wrapped
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@runs.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="print the run as a JSON object")
def show(run: str, as_json: bool) -> None:
    """Every recorded field of RUN (an id or a unique prefix of one), with its progress and ETA."""
    r = Registry().get(run)
    if as_json:
        click.echo(json.dumps(record_json(r), indent=1))
        return
    console = _console()
    now = run_progress.from_log(r.log_path, r.started_at, r.state == "running")
    rows = [("id", r.id), ("stage", r.stage), ("backend", r.backend), ("state", _state(r)),
            ("pipeline", r.pipeline), ("created", _when(r.created_at)), ("started", _when(r.started_at)),
            ("finished", _when(r.finished_at)), ("duration", _duration(r.duration)),
            ("progress", progress_line(now)), ("ETA", run_progress.clock(now.eta_s) if now and now.eta_s is not None
                                               else None), ("exit code", r.exit_code),
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


@runs.command("tensorboard")
@click.argument("run")
@click.option("--port", type=click.IntRange(1, 65535), default=6006, show_default=True,
              help="port TensorBoard listens on, at 127.0.0.1")
@click.option("--print-only", is_flag=True, help="print the command and its URL; start nothing")
def tensorboard(run: str, port: int, print_only: bool) -> None:
    """TensorBoard on RUN's training logs: started on a local run's event files (Ctrl-C stops it); for a
    run on PAI, where its DLC job shows them."""
    import importlib.util

    from ..backends import get_backend
    from pai_distil.core.errors import UserError

    record = Registry().get(run)
    logdir, elsewhere = get_backend(record.backend).tensorboard(record)
    if logdir is None and elsewhere:
        click.echo(elsewhere)
        return
    if logdir is None or not logdir.is_dir():
        raise UserError(f"run {record.id} ({record.stage}, {record.state}) has no TensorBoard event files in "
                        f"{record.output}; training stages write them while train.report_to names tensorboard")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port)]
    click.echo(f"tensorboard --logdir {logdir} --port {port}\nhttp://127.0.0.1:{port}/")
    if print_only:
        return
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("TensorBoard is not installed here; pip install tensorboard, then run the command above")
    sys.stdout.flush()
    os.execv(command[0], command)  # become TensorBoard: Ctrl-C or a signal to this process stops it, nothing is left


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


def _say_removal(removal, dry_run: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**removal.as_dict(), "dry_run": dry_run}, indent=1))
        return
    verb = "would remove" if dry_run else "removed"
    for path, why in removal.kept.items():
        click.echo(f"kept {path}: {why}")
    click.echo(f"{verb} {len(removal.runs)} run(s) and {len(removal.dirs)} folder(s), "
               f"{removal.freed_bytes / 1e6:.1f} MB")


@runs.command("rm")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN...")
@click.option("--dry-run", is_flag=True, help="say what would be removed; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="print what was removed and kept as JSON")
def rm(run_ids: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove finished RUNs: their records, logs and work dirs. A work dir another run still uses (a cached
    run's output, or an input of a succeeded run) is kept, and said so; outputs in OSS are never removed."""
    from pai_distil.run.cleanup import remove

    _say_removal(remove(list(run_ids), dry_run=dry_run), dry_run, as_json)


@runs.command("gc")
@click.option("--failed", is_flag=True, help="also remove failed and cancelled runs, with the checkpoints a "
                                             "resubmit would resume from")
@click.option("--dry-run", is_flag=True, help="say what would be removed; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="print what was removed and kept as JSON")
def gc(failed: bool, dry_run: bool, as_json: bool) -> None:
    """Free the disk no run uses: work dirs and logs of removed runs, leftovers of interrupted reruns."""
    from pai_distil.run.cleanup import collect

    _say_removal(collect(failed=failed, dry_run=dry_run), dry_run, as_json)


COMMANDS = [runs]
