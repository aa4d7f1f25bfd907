"""The isolation boundaries model-written code runs behind: bubblewrap, a Docker container, or
(for trusted code, when the user says so) none.

Why kernel boundaries and no in-process guard: whatever runs in the program's own interpreter
(an audit hook, an import blocker) can be undone from inside it, through frames, `gc`, `ctypes`
or `_posixsubprocess`. Both boundaries here start the program as an unprivileged user in new
namespaces (user, PID, network, IPC, mount), with nothing of the host in view but a read-only
interpreter, a small empty scratch dir as the only writable place, and a cleared environment;
the whole process tree dies with the PID namespace on timeout.

Every writable file system inside is memory-backed and sized (`scratch_mb`): RLIMIT_AS bounds a
process's memory, not what it stores in a tmpfs, so an unsized one (bubblewrap's `--dev`, say)
would let a program fill the host's memory through files. Under bubblewrap the root, `/dev` and
`/sandbox` are read-only, `/tmp` and `/dev/shm` sized; under Docker `/dev` belongs to root,
`--ipc none` mounts no `/dev/shm`, and the sized `/tmp` counts in the container's `--memory`.

- bubblewrap: as root, bwrap itself runs as `nobody`, so the user namespace it makes maps to
  an unprivileged uid and RLIMIT_NPROC binds (root is exempt from it); the limit then counts
  only the sandbox's own processes, as they live in a user namespace of their own.
- Docker: `--network none --read-only --pids-limit --memory --user 65534`, no capabilities, on
  an image with python3 (by default the job image's Debian base, `pai-distil images
  bootstrap-base`); slower to start (about a second per run), used where bubblewrap is not.
"""

from __future__ import annotations

import functools
import os
import signal
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from pai_distil.core import dockercli
from pai_distil.core.errors import UserError

NOBODY = 65534
SCRATCH_MB = 64  # the writable /tmp inside the sandbox (memory-backed), at most
SHM_MB = 16  # /dev/shm under bubblewrap (POSIX semaphores, multiprocessing), at most


def scratch_mb(memory_mb: int) -> tuple[int, int]:
    """Sizes of the sandbox's /tmp and /dev/shm in MB: together below `memory_mb`, so what a program
    stores in files never exceeds what it may hold in memory."""
    return min(SCRATCH_MB, memory_mb // 2), min(SHM_MB, memory_mb // 4)


class SandboxUnavailable(UserError):
    """The chosen isolation cannot run here, or `none` was chosen without allowing it."""


class Boundary:
    """How one run is started and stopped. `box` is the host dir holding the run's main.py and
    harness.py, seen as /sandbox inside; `stop` returns only when no process of the run is left."""

    name = "none"
    rlimit_nproc = True  # the harness bounds processes with RLIMIT_NPROC (else the boundary does)
    start_s = 0.0  # start-up time added to the wall-clock limit, so every boundary gives programs the same

    def describe(self) -> str:
        return "none: model-written code runs unisolated on this machine (sandbox.allow_unsandboxed)"

    def popen_kw(self) -> dict:
        return {"env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, "start_new_session": True}

    def run(self, box: Path, argv: list[str], limits, stdin, stdout, stderr) -> tuple[int, bool]:
        """Run the harness with `argv` on these files; (its exit code, whether it was stopped at the timeout)."""
        name = f"pai-distil-sandbox-{uuid.uuid4().hex[:12]}"
        with open(box / "main.py", "rb") as program, open(box / "harness.py", "rb") as harness:
            fds = (program.fileno(), harness.fileno())
            proc = subprocess.Popen(self.command(box, argv, limits, name, fds), stdin=stdin, stdout=stdout,
                                    stderr=stderr, pass_fds=fds, **self.popen_kw())
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s + self.start_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.stop(proc, name)
        return proc.returncode, timed_out

    def command(self, box: Path, argv: list[str], limits, name: str, fds: tuple[int, int]) -> list[str]:
        """The command line; `fds` are main.py and harness.py, open for reading in the child."""
        inside = [str(box / a[len("/sandbox/"):]) if a.startswith("/sandbox/") else a for a in argv]
        return [sys.executable, "-I", "-B", *inside]

    def stop(self, proc: subprocess.Popen, name: str) -> None:
        _kill(-proc.pid)
        proc.wait()


class Bwrap(Boundary):
    name = "bwrap"

    def __init__(self, exe: str, python: str):
        self.exe, self.python = exe, python
        self.drop = os.geteuid() == 0

    def describe(self) -> str:
        who = "as nobody" if self.drop else f"as uid {os.geteuid()}"
        return (f"bwrap: user, PID, network, IPC and mount namespaces, {who}, read-only {self.python}, "
                f"read-only root and /dev, scratch /tmp (<= {SCRATCH_MB} MB) and /dev/shm (<= {SHM_MB} MB), "
                "cleared environment")

    def popen_kw(self) -> dict:
        kw = super().popen_kw()
        if self.drop:
            kw.update(user=NOBODY, group=NOBODY, extra_groups=[])
        return kw

    def command(self, box: Path, argv: list[str], limits, name: str, fds: tuple[int, int]) -> list[str]:
        # copied in from open files: bwrap, running as nobody, needs no access to our temp dir
        files = ("--ro-bind-data", str(fds[0]), "/sandbox/main.py",
                 "--ro-bind-data", str(fds[1]), "/sandbox/harness.py")
        return [self.exe, *self.view(limits.memory_mb, files), "--", self.python, "-I", "-B", *argv]

    def view(self, memory_mb: int, files: tuple[str, ...] = ()) -> list[str]:
        """Namespaces, environment and the file system the program sees, sized for `memory_mb`; `files`
        are bwrap's arguments that place files in it before its root turns read-only."""
        args = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
                "--setenv", "LANG", "C.UTF-8", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        prefix = str(Path(self.python).parent.parent)
        if not (prefix + "/").startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
        tmp_mb, shm_mb = scratch_mb(memory_mb)
        # --dev's own tmpfs has no size: read-only, with a sized tmpfs on /dev/shm; the root, which
        # holds /sandbox's files, read-only too
        return [*args, "--proc", "/proc", "--dev", "/dev", "--size", str(shm_mb << 20), "--tmpfs", "/dev/shm",
                "--remount-ro", "/dev", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", *files, "--remount-ro", "/",
                "--chdir", "/tmp"]

    def stop(self, proc: subprocess.Popen, name: str) -> None:
        # bwrap's child is PID 1 of the run's PID namespace: when it dies the kernel kills every
        # process in it (setsid or not), and bwrap's wait for it returns once they are all gone.
        if proc.poll() is None:
            for child in _children(proc.pid):
                _kill(child)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill(proc.pid)
        proc.wait()


class Docker(Boundary):
    name = "docker"
    rlimit_nproc = False  # uid 65534 is not namespaced here: RLIMIT_NPROC would count every such process
    start_s = 1.0  # a container's start, before the program's first line

    def __init__(self, image: str):
        self.image = image

    def describe(self) -> str:
        return (f"docker: container of {self.image} as uid {NOBODY}, --network none, --read-only, no capabilities, "
                f"no /dev/shm, scratch /tmp (<= {SCRATCH_MB} MB)")

    def popen_kw(self) -> dict:
        return {"env": dockercli.env(), "start_new_session": True}

    def command(self, box: Path, argv: list[str], limits, name: str, fds: tuple[int, int]) -> list[str]:
        tmp_mb = scratch_mb(limits.memory_mb)[0]
        memory = f"{limits.memory_mb + tmp_mb}m"  # the program, and what it stores in /tmp
        # prlimit bounds what the client writes of the program's output into our stdout file
        return ["prlimit", f"--fsize={limits.output_mb << 20}", "--", dockercli.binary(), "run", "--rm", "-i",
                "--name", name, "--init", "--network", "none", "--read-only", "--ipc", "none",
                "--pids-limit", str(limits.processes + 4), "--memory", memory, "--memory-swap", memory,
                "--user", f"{NOBODY}:{NOBODY}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--tmpfs", f"/tmp:rw,nosuid,nodev,size={tmp_mb}m,mode=1777", "-v", f"{box}:/sandbox:ro",
                "-w", "/tmp", "-e", "HOME=/tmp", "-e", "LANG=C.UTF-8", "--log-driver", "none",
                self.image, "python3", "-I", "-B", *argv]

    def stop(self, proc: subprocess.Popen, name: str) -> None:
        # The client's end stops nothing (at the timeout, or past its output limit): removing the
        # container kills its whole PID namespace. Always, since the exit code cannot tell.
        dockercli.docker("rm", "-f", name, check=False, timeout=60)
        proc.wait()


def choose(kind: str, image: str, allow_unsandboxed: bool) -> Boundary:
    """The boundary for `sandbox.isolation`; SandboxUnavailable (one line) when it cannot run here."""
    if kind == "none":
        if not allow_unsandboxed:
            raise SandboxUnavailable(
                "sandbox.isolation is none: model-written code would run unisolated on this machine; set "
                "sandbox.allow_unsandboxed: true to accept that (trusted code only), or use auto, bwrap or docker")
        return Boundary()
    found = {}
    for name in ("bwrap", "docker") if kind == "auto" else (kind,):
        boundary, why = _bwrap() if name == "bwrap" else _docker(image)
        if boundary is not None:
            return boundary
        found[name] = why
    if kind == "auto" and allow_unsandboxed:
        return Boundary()
    whys = "; ".join(f"{k}: {v}" for k, v in found.items())
    raise SandboxUnavailable(
        f"sandbox.isolation is {kind}, but no sandbox for model-written code runs here ({whys}); install "
        "bubblewrap (`apt-get install bubblewrap`) or start Docker, or set sandbox.allow_unsandboxed: true "
        "to run it unisolated (trusted code only)")


@functools.cache
def _bwrap() -> tuple[Bwrap | None, str]:
    exe = shutil.which("bwrap")
    if exe is None:
        return None, "bubblewrap is not installed"
    python = _interpreter(NOBODY if os.geteuid() == 0 else None)
    if python is None:
        return None, f"no Python interpreter that user {NOBODY} can read (none of {_candidates()})"
    b = Bwrap(exe, python)
    try:
        probe = subprocess.run([exe, *b.view(SCRATCH_MB * 2), "--", python, "-I", "-c", "pass"], capture_output=True, text=True,
                               timeout=30, **b.popen_kw())
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bwrap does not start ({e})"
    if probe.returncode != 0:
        return None, f"bwrap cannot make its namespaces here ({dockercli.last_line(probe.stderr)})"
    return b, ""


@functools.cache
def _docker(image: str) -> tuple[Docker | None, str]:
    try:
        dockercli.require_engine()
    except UserError:
        return None, "the Docker engine is not running"
    if not dockercli.image_id(image):
        return None, f"no image {image} (make it with `pai-distil images bootstrap-base`, or set sandbox.image)"
    return Docker(image), ""


def _candidates() -> list[str]:
    return list(dict.fromkeys([os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
                               os.path.realpath(sys.executable), "/usr/bin/python3"]))


def _interpreter(uid: int | None) -> str | None:
    """This Python where the sandbox's user can run it, else the system's python3, else None."""
    for exe in _candidates():
        if os.path.isfile(exe) and (os.access(exe, os.X_OK) if uid is None else _others_can_run(Path(exe))):
            return exe
    return None


def _others_can_run(exe: Path) -> bool:
    return all(d.stat().st_mode & stat.S_IXOTH for d in (exe, *exe.parents))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
