"""How far a run has got, read from the lines its job writes to the run's log.

A job reports progress in two shapes, on every backend: `[progress] TASK DONE/TOTAL` (generate,
evaluate, teacher-logits) and the trainer's `step N/M loss X ... T tok/s` lines. Both the live
bars of an attached run (`run.follow`) and `runs show` / the SDK's `Run.progress` read them here,
so a bar and a listing never disagree on what a line means.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass

TASK = re.compile(r"^\[progress\] (\S+) (\d+)/(\d+)\s*$")
# node 0 of a multi-node local job prefixes its lines with `[node-0] `
STEP = re.compile(r"^(?:\[node-0\] )?step (\d+)/(\d+)\b(.*)$")
LOSS = re.compile(r"\bloss (\S+)")
TOKENS_PER_S = re.compile(r"\b(\d+(?:\.\d+)?) tok/s\b")
TAIL_BYTES = 256 * 1024
TRAIN_TASK = "train"


@dataclass
class Progress:
    """The newest progress a run's log shows: a task (`train` for training steps) and how far it got."""

    task: str
    done: int
    total: int
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None  # None when unknown (no rate yet) or the run has ended

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "percent": round(self.percent, 1)}


def parse_line(line: str) -> Progress | None:
    """The progress a log line reports, or None for any other line."""
    if m := TASK.match(line):
        return Progress(m[1], int(m[2]), int(m[3]))
    if m := STEP.match(line):
        loss, rate = LOSS.search(m[3]), TOKENS_PER_S.search(m[3])
        return Progress(TRAIN_TASK, int(m[1]), int(m[2]), loss=_number(loss[1]) if loss else None,
                        tokens_per_s=float(rate[1]) if rate else None)
    return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def log_tail(log_path: str | os.PathLike, tail_bytes: int = TAIL_BYTES) -> list[str]:
    """The last lines of a run's log (none when it cannot be read)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def from_log(log_path: str | None, started_at: float | None, running: bool) -> Progress | None:
    """The last progress line of a run's log; with an ETA while the run is running, at the rate the run has
    kept since it started up to the line's writing (the log's modification time)."""
    if not log_path:
        return None
    try:
        written = os.stat(log_path).st_mtime
    except OSError:
        return None
    lines = log_tail(log_path)
    last = next((p for line in reversed(lines) if (p := parse_line(line.rstrip("\r")))), None)
    if last is not None and running and started_at and 0 < last.done < last.total:
        per_item = max(0.0, written - started_at) / last.done
        last.eta_s = max(0.0, per_item * (last.total - last.done) - (time.time() - written))
    return last


def clock(seconds: float | None) -> str:
    """`1:02:03` / `2:03`, as a bar's time columns show it; `-` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
