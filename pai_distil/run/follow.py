"""Watching a run: its log as it grows, with `[progress] TASK DONE/TOTAL` lines and the trainer's
`step N/M loss ...` lines drawn as bars with an ETA (`run.progress` reads both).

The log file is the only channel from a job to the user, on every backend, so following a run
works the same whether `submit` started it a second ago or `runs logs -f` attaches later.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from pai_distil.core.errors import UserError
from pai_distil.run import progress as run_progress
from pai_distil.run.registry import Registry, RunRecord

POLL_S = 0.2


def iter_log(record: RunRecord, follow: bool, registry: Registry | None = None) -> Iterator[str]:
    """Lines of the run's log from the start; when following, until the run ends and the log is drained."""
    registry = registry or Registry()
    if not record.log_path:
        raise UserError(f"run {record.id} has no log")
    while True:
        try:
            f = open(record.log_path, "rb")
            break
        except FileNotFoundError:
            if not follow or record.terminal:
                raise UserError(f"log {record.log_path} of run {record.id} does not exist") from None
            time.sleep(POLL_S)
            record = registry.get(record.id)
    with f:
        pending = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
                continue
            if not follow:
                break
            # nothing new: stop once the run has ended and everything it wrote has been read
            ended = registry.get(record.id).terminal
            chunk = f.read(1 << 16)
            if chunk:
                pending += chunk
                continue
            if ended:
                break
            time.sleep(POLL_S)
        if pending:
            yield pending.decode("utf-8", "replace").rstrip("\r")


def tail_log(record: RunRecord, follow: bool = False, registry: Registry | None = None,
             out: TextIO | None = None) -> None:
    """Print a run's log as the job wrote it (progress lines included), for `runs logs`."""
    out = out or sys.stdout
    for line in iter_log(record, follow, registry):
        out.write(line + "\n")
        out.flush()


def _bars(console: Console) -> Progress:
    """Live bars: task, bar, done/total, elapsed and ETA (rich's estimate from the recent rate)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)


def _advance(progress: Progress, tasks: dict[str, int], now: run_progress.Progress) -> None:
    """Move a task's bar to `now`; a training bar also names the loss and tokens/s of the newest step."""
    description = now.task
    if now.loss is not None:
        description += f" loss {now.loss:.4g}"
    if now.tokens_per_s is not None:
        description += f" {now.tokens_per_s:.0f} tok/s"
    if now.task not in tasks:
        tasks[now.task] = progress.add_task(description, total=now.total)
    progress.update(tasks[now.task], completed=now.done, total=now.total, description=description)


def follow(run_id: str, registry: Registry | None = None, console: Console | None = None) -> RunRecord:
    """Show a run until it ends and return its final record. Ctrl-C cancels a run whose job lives here;
    from a job that outlives its supervisor (a DLC job, paid by the hour) it only detaches, says how to
    reattach or cancel, and raises KeyboardInterrupt again (the CLI exits 130)."""
    registry = registry or Registry()
    console = console or Console(highlight=False)
    record = registry.get(run_id)
    try:
        with _bars(console) as progress:
            tasks: dict[str, int] = {}
            for line in iter_log(record, True, registry):
                now = run_progress.parse_line(line)
                if now is None or not run_progress.TASK.match(line):  # step lines stay: they are the loss history
                    progress.console.print(Text("│ ", style="dim") + Text(line), highlight=False, soft_wrap=True)
                if now is not None:
                    _advance(progress, tasks, now)
    except KeyboardInterrupt:
        from pai_distil.backends import get_backend

        backend = get_backend(record.backend, registry)
        if backend.job_outlives_supervisor:
            console.print(f"detached from run {record.id}; its job keeps running. Follow it again with "
                          f"`pai-distil runs attach {record.id}`, stop it with `pai-distil runs cancel {record.id}`",
                          soft_wrap=True)
            raise
        console.print(f"cancelling run {record.id} (the job saves a checkpoint first) ...")
        record = get_backend(record.backend, registry).cancel(registry.get(record.id))
        console.print(f"run {record.id} {record.state}")
        return record
    return registry.get(record.id)
