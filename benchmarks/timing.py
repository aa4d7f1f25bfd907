"""Timing a job from its log: each `step k/N` line a trainer prints is stamped as it arrives on the pipe.

Shared by the benchmarks: the jobs run unbuffered, so the stamps of two step lines bound the time
spent training between them, whatever the job did before (imports, model build) or does after
(the final save).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b")


def follow(proc: subprocess.Popen, log_path: Path | None = None, on_line=None) -> tuple[dict[int, float], list[str]]:
    """Read `proc`'s output to its end: ({step: time.time() its line arrived}, lines). Each line is
    appended to `log_path` when given and passed to `on_line(line)` (which may kill the job)."""
    stamps, lines = {}, []
    log = open(log_path, "a") if log_path else None
    try:
        for line in proc.stdout:
            now = time.time()
            if log:
                log.write(line)
            lines.append(line.rstrip("\n"))
            if m := STEP_LINE.match(line):
                stamps[int(m.group(1))] = now
            if on_line:
                on_line(line)
    finally:
        if log:
            log.close()
    proc.wait()
    return stamps, lines


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c cpu` (one core: torch then sizes itself to one thread), where taskset exists."""
    return (["taskset", "-c", str(cpu)] + cmd) if cpu is not None and shutil.which("taskset") else cmd


def start(cmd: list[str], env: dict, cwd: Path, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=new_session)


def timed_run(cmd: list[str], env: dict, cwd: Path) -> tuple[dict[int, float], list[str]]:
    """Run `cmd` to its end, stamping its step lines; exits with its last lines when it fails."""
    proc = start(cmd, env, cwd)
    stamps, lines = follow(proc)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (rc {proc.returncode}):\n" + "\n".join(lines[-30:]))
    return stamps, lines


def parse_arms_args(ap: argparse.ArgumentParser, plain_trl) -> argparse.Namespace | None:
    """The options every A/B benchmark shares (interleaved rounds, the pinned core) and its hidden
    plain-TRL arm, which runs in a child process of the benchmark: None when this process was that arm."""
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=0, help="the core every arm is pinned to")
    ap.add_argument("--plain-trl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_trl:
        plain_trl(json.loads(args.plain_trl))
        return None
    return args
