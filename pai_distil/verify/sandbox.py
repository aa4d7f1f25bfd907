"""Run an untrusted Python program: own temp dir, time/memory/output/process limits, no network.

Built for model-written programs that loop, fork, allocate or reach out by mistake, not for an
adversary: audit hooks can be undone from inside Python, so the kernel layers (namespace,
rlimits, process group, unprivileged user) are the ones that hold against deliberate escapes.
Layers:
- a process group of its own, killed whole (SIGKILL) when the wall-clock limit passes;
- resource limits set in the child before the program runs: RLIMIT_AS (memory), RLIMIT_CPU,
  RLIMIT_FSIZE (stdout goes to a file, so endless printing stops too), RLIMIT_CORE=0 and
  RLIMIT_NPROC;
- when started as root, the child drops to the unprivileged user `nobody` where the interpreter
  is readable by it (so RLIMIT_NPROC holds); and always, an audit hook refuses writes, deletes and
  renames outside the temp dir;
- network: a fresh, empty network namespace (`unshare --net`, or `unshare --user --net` without
  root) where the kernel allows it — see `isolation()` — and always a Python audit hook that
  refuses sockets, process creation (fork, exec, subprocess, os.system) and ctypes.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
BLOCKED = "pai-distil sandbox blocked"

# Runs in the child before the program: limits, privilege drop, audit hook, then the program.
GUARD = r'''
import os, resource, sys
mem, cpu, fsize, nproc, drop = (int(x) for x in sys.argv[1:6])
program = sys.argv[6]
home = os.path.dirname(program) + os.sep
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
if drop:
    os.setgroups([]); os.setgid(drop); os.setuid(drop)
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
_DENY = ("socket.", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system",
         "subprocess.Popen", "pty.spawn", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill")
_FS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
       "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
def _outside(path):
    try:
        return not os.path.realpath(os.fsdecode(path)).startswith(home)
    except (TypeError, ValueError):
        return not isinstance(path, int)  # an fd is fine (already opened)
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _writes(mode, flags):
    return any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _W)
def _hook(event, args):
    if event.startswith(_DENY):
        raise PermissionError("%s: %s" % (BLOCKED, event))
    if event == "open" and _writes(args[1], args[2]) and _outside(args[0]):
        raise PermissionError("%s: writing %s" % (BLOCKED, args[0]))
    if event in _FS and args and _outside(args[0]):
        raise PermissionError("%s: %s %s" % (BLOCKED, event, args[0]))
sys.addaudithook(_hook)
sys.argv = [program]
del resource, mem, cpu, fsize, nproc, drop
import runpy
runpy.run_path(program, run_name="__main__")
'''.replace("BLOCKED", repr(BLOCKED))


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 6.0  # wall clock per run
    memory_mb: int = 1024  # address space
    output_mb: int = 16  # stdout file size
    processes: int = 16  # RLIMIT_NPROC headroom above what the user already runs (threads count)


DEFAULT = Limits()


@dataclass
class RunResult:
    status: str  # ok | error | timeout | memory | blocked | output_limit
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


@functools.cache
def _net_prefix() -> tuple[str, ...]:
    """The `unshare` invocation that gives the child an empty network namespace here, or ()."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    options = [(exe, "--net")] if os.geteuid() == 0 else []
    options.append((exe, "--user", "--map-root-user", "--net"))
    for prefix in options:
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


@functools.cache
def _can_drop() -> bool:
    """Whether the child can run as `nobody`: we are root and nobody can read the interpreter."""
    if os.geteuid() != 0:
        return False
    for path in {Path(os.__file__).parent, Path(sys.executable).resolve().parent}:
        for d in (path, *path.parents):
            if not d.stat().st_mode & stat.S_IXOTH:
                return False
    return True


def isolation() -> str:
    """How the network is cut off on this machine (for logs and reports)."""
    prefix = _net_prefix()
    ns = f"network namespace ({' '.join(['unshare', *prefix[1:]])})" if prefix else "no network namespace available"
    user = ", runs as nobody" if _can_drop() else ""
    return f"{ns} + audit hook refusing sockets and process creation{user}"


def _user_processes() -> int:
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def run_python(program: str, stdin: str = "", limits: Limits = DEFAULT) -> RunResult:
    """Run `program` with `stdin`; never raises for anything the program does."""
    tmp = Path(tempfile.mkdtemp(prefix="pai-distil-sandbox-"))
    try:
        (tmp / "main.py").write_text(program, encoding="utf-8")
        (tmp / "guard.py").write_text(GUARD, encoding="utf-8")
        (tmp / "stdin.txt").write_text(stdin, encoding="utf-8")
        drop = NOBODY if _can_drop() else 0
        if drop:
            for p in (tmp, *tmp.iterdir()):
                os.chown(p, NOBODY, NOBODY)
        nproc = limits.processes if drop else _user_processes() + limits.processes
        args = [str(limits.memory_mb << 20), str(int(limits.timeout_s) + 1), str(limits.output_mb << 20),
                str(nproc), str(drop), str(tmp / "main.py")]
        cmd = [*_net_prefix(), sys.executable, "-I", "-B", str(tmp / "guard.py"), *args]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp), "LANG": "C.UTF-8"}
        start = time.monotonic()
        with (open(tmp / "stdin.txt", "rb") as fin, open(tmp / "stdout", "wb") as fout,
              open(tmp / "stderr", "wb") as ferr):
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=tmp, env=env, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        out = _read(tmp / "stdout", limits.output_mb << 20)
        err = _read(tmp / "stderr", 1 << 16)
        return RunResult(_status(proc.returncode, timed_out, err), proc.returncode, out, err, round(seconds, 3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _status(returncode: int, timed_out: bool, stderr: str) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"
    if returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit"
    if BLOCKED in stderr:
        return "blocked"
    if "MemoryError" in stderr:
        return "memory"
    return "ok" if returncode == 0 else "error"
