"""Run an untrusted Python program on one test case's input, behind an isolation boundary, with
time, memory, output and process limits.

Each run gets a fresh host temp dir holding the program, the harness (harness.py) and nothing
else; the sandbox sees those two files read-only, reads the case's input on stdin and writes
stdout and stderr to files here, bounded by RLIMIT_FSIZE. The expected output is never written
anywhere the program can reach: the caller compares what comes back. The boundary (bubblewrap,
Docker, or none for trusted code) is chosen by `Limits.isolation`; see isolation.py.

    r = run_python("print(sum(map(int, input().split())))", "1 2\\n")
    r.status, r.stdout  # ("ok", "3\\n")
"""

from __future__ import annotations

import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pai_distil.core.dockercli import BASE_TAG
from pai_distil.core.verify import isolation
from pai_distil.core.verify.isolation import SandboxUnavailable

__all__ = ["DEFAULT", "Limits", "RunResult", "SandboxUnavailable", "boundary", "describe", "run_python"]

HARNESS = Path(__file__).with_name("harness.py")
# the kernel's answer when the program reached for what the boundary withholds
_REFUSED = re.compile(r"Errno (1|11|13|30|97|101|111)\]|Read-only file system|Network is unreachable|"
                      r"Connection refused|Resource temporarily unavailable|Operation not permitted")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 6.0  # wall clock per run
    memory_mb: int = 1024  # address space per process (Docker: the whole container)
    output_mb: int = 16  # stdout and stderr file size
    processes: int = 16  # processes and threads of the program (RLIMIT_NPROC in its own user namespace)
    isolation: str = "auto"  # auto | bwrap | docker | none
    allow_unsandboxed: bool = False  # let `none` (or `auto` where nothing else runs) run code unisolated
    image: str | None = None  # the Docker image with python3 for `docker`; None: dockercli.BASE_TAG

    @classmethod
    def of(cls, config) -> Limits:
        """The limits a stage's `sandbox` config (specs.CodeSandbox) asks for."""
        return cls(**config.model_dump())


DEFAULT = Limits()


@dataclass
class RunResult:
    status: str  # ok | error | timeout | memory | blocked | output_limit
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def boundary(limits: Limits | None = None) -> isolation.Boundary:
    """The boundary these limits ask for on this machine; SandboxUnavailable (one line) when none runs."""
    limits = limits or DEFAULT
    return isolation.choose(limits.isolation, limits.image or BASE_TAG, limits.allow_unsandboxed)


def describe(limits: Limits | None = None) -> str:
    """Which sandbox is in force, for logs and reports; SandboxUnavailable when none runs."""
    return boundary(limits).describe()


def run_python(program: str, stdin: str = "", limits: Limits | None = None, fn_name: str | None = None) -> RunResult:
    """Run `program` on `stdin` (with `fn_name`: call that function on stdin's JSON lines and print
    its JSON result); never raises for anything the program does."""
    limits = limits or DEFAULT
    b = boundary(limits)
    with tempfile.TemporaryDirectory(prefix="pai-distil-sandbox-") as tmp:
        run = Path(tmp)  # private to us: input, output, and the box
        box = run / "sandbox"  # what the program sees, read-only, as /sandbox
        box.mkdir()
        (box / "main.py").write_text(program, encoding="utf-8")
        (box / "harness.py").write_bytes(HARNESS.read_bytes())
        for path, mode in ((box, 0o755), (box / "main.py", 0o644), (box / "harness.py", 0o644)):
            path.chmod(mode)  # readable to the sandbox's unprivileged user
        (run / "stdin.txt").write_text(stdin, encoding="utf-8")
        argv = ["/sandbox/harness.py", "/sandbox/main.py", str(limits.memory_mb << 20), str(int(limits.timeout_s) + 1),
                str(limits.output_mb << 20), str(limits.processes if b.rlimit_nproc else 0),
                *([fn_name] if fn_name else [])]
        start = time.monotonic()
        with (open(run / "stdin.txt", "rb") as fin, open(run / "stdout", "wb") as fout,
              open(run / "stderr", "wb") as ferr):
            returncode, timed_out = b.run(box, argv, limits, fin, fout, ferr)
        seconds = round(time.monotonic() - start, 3)
        cap = limits.output_mb << 20
        full = any((run / f).stat().st_size >= cap for f in ("stdout", "stderr"))
        out = _read(run / "stdout", cap)
        err = _read(run / "stderr", 1 << 16, tail=True)
    return RunResult("output_limit" if full else _status(returncode, timed_out, err), returncode, out, err, seconds)


def _read(path: Path, limit: int, tail: bool = False) -> str:
    """At most `limit` bytes of the file: its start, or with `tail` its end (where a traceback is)."""
    with open(path, "rb") as f:
        if tail:
            f.seek(max(0, path.stat().st_size - limit))
        return f.read(limit).decode("utf-8", errors="replace")


def _signalled(returncode: int, sig: int) -> bool:
    return returncode in (-sig, 128 + sig)  # directly, or as bwrap and Docker report a signalled child


def _status(returncode: int, timed_out: bool, stderr: str) -> str:
    if timed_out or _signalled(returncode, signal.SIGXCPU) or _signalled(returncode, signal.SIGKILL):
        return "timeout"
    if _signalled(returncode, signal.SIGXFSZ) or "File too large" in stderr:
        return "output_limit"
    if returncode == 0:
        return "ok"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if "MemoryError" in last:
        return "memory"
    return "blocked" if _REFUSED.search(last) else "error"
