"""One job per work directory: an exclusive `flock` held, in turn, by the client that submits, the
run's supervisor and the job's processes themselves.

Why a lock the job holds rather than the registry's word: a supervisor can die (killed, OOM)
while its job goes on writing checkpoints; the registry then says failed while the job says
"artifact complete". The kernel drops a `flock` only when every process holding the open file
is gone, so the lock is held exactly as long as anything of the run lives. The client takes it
before anything is written, hands the open file to the supervisor (`pass_fds`), which hands it
to each node's launcher. The lock file sits beside the work dir, so `--force` can empty the dir.

The file holds `{"run_id", "pgids"}`: who holds it, and the process groups to stop when its
supervisor is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

from pai_distil.core.errors import UserError

FD_ENV = "PAI_DISTIL_WORK_LOCK_FD"  # the inherited lock's descriptor, in the supervisor's environment
_held: dict[str, int] = {}  # work dir -> descriptor this process holds


def lock_path(work_dir: str | Path) -> Path:
    work = Path(work_dir)
    return work.parent / f"{work.name}.lock"


def try_lock(work_dir: str | Path) -> int | None:
    """The descriptor of the work dir's lock, now held by this process; None when something else holds it."""
    path = lock_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def holder(work_dir: str | Path) -> dict | None:
    """What the lock file says of whoever holds the lock, or None when it is free (or was never taken)."""
    if not lock_path(work_dir).exists():
        return None
    fd = try_lock(work_dir)
    if fd is not None:
        os.close(fd)
        return None
    try:
        return json.loads(lock_path(work_dir).read_text() or "{}")
    except (OSError, ValueError):  # being written: the holder is there, its details not yet
        return {}


def describe(fd: int, run_id: str, pgids: list[int] | None = None) -> None:
    """Write who holds the lock into its file (through the held descriptor)."""
    data = json.dumps({"run_id": run_id, "pgids": pgids or []}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def hold(work_dir: str | Path, run_id: str) -> int:
    """Take the work dir's lock for `run_id` in this process, or a UserError naming the run that has it."""
    fd = try_lock(work_dir)
    for _ in range(5):  # another process may be probing the lock for a moment (`holder`)
        if fd is not None:
            break
        time.sleep(0.1)
        fd = try_lock(work_dir)
    if fd is None:
        other = (holder(work_dir) or {}).get("run_id") or "another run"
        raise UserError(f"run {other} is already working in {work_dir}; follow it with `pai-distil runs logs -f "
                        f"{other}` or stop it with `pai-distil runs cancel {other}`, then submit again")
    describe(fd, run_id)
    _held[str(work_dir)] = fd
    return fd


def held_fd(work_dir: str | Path | None) -> int | None:
    """The descriptor this process holds for `work_dir` (to hand to a child), if any."""
    return _held.get(str(work_dir)) if work_dir else None


def release(work_dir: str | Path) -> None:
    fd = _held.pop(str(work_dir), None)
    if fd is not None:
        os.close(fd)


def signal_holder(work_dir: str | Path, sig: int, run_id: str | None = None) -> bool:
    """Send `sig` to the process groups holding the lock (those of `run_id` only, when given);
    returns whether any holder was there."""
    info = holder(work_dir)
    if info is None or (run_id is not None and info.get("run_id") != run_id):
        return False
    for pgid in info.get("pgids") or []:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return True


def stop_orphan(work_dir: str | Path, grace_s: float = 30.0) -> bool:
    """Stop the processes holding the lock (a job whose supervisor is gone): SIGTERM, so it saves a
    checkpoint, then SIGKILL after `grace_s`. Returns whether the lock is free afterwards."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not signal_holder(work_dir, sig):
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if holder(work_dir) is None:
                return True
            time.sleep(0.1)
    return holder(work_dir) is None
