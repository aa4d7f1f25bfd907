"""Supervisor of one `process` run: `python -m pai_distil.backends.supervisor RUN_ID [REGISTRY]`.

Started detached by ProcessBackend with the job-contract environment already set. It starts
one launcher per node (RANK = node index), each in its own process group so that a stop
reaches torchrun's workers too, appends their output to the run's log, and records the outcome.
SIGTERM means cancel: the job gets SIGTERM (it saves a checkpoint), then SIGKILL after a grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pai_distil.core.contract import ERROR_PREFIX

from pai_distil.run import work_lock
from pai_distil.core.artifacts import is_complete
from ..paths import run_dir
from pai_distil.run.registry import ACTIVE, Registry
from pai_distil.core.config import JobSpec

GRACE_ENV = "PAI_DISTIL_STOP_GRACE_S"
DEFAULT_GRACE_S = 30.0
POLL_S = 0.1
NO_ARTIFACT = "job exited 0 but wrote no complete artifact"


def error_line(log_path: str | Path, tail_bytes: int = 256 * 1024) -> str | None:
    """The job's own explanation: its last `pai-distil job error:` line, else its last line."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if ERROR_PREFIX in line:
            return line.split(ERROR_PREFIX, 1)[1].strip() or line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), None)


def shell_status(returncode: int) -> int:
    """Exit status as a shell reports it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self, run_id: str, registry: Registry):
        self.run_id = run_id
        self.registry = registry
        self.stop_requested = False
        self.procs: list[subprocess.Popen] = []
        self.grace_s = float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_S)
        lock = os.environ.get(work_lock.FD_ENV, "")
        self.lock_fds = (int(lock),) if lock.isdigit() else ()  # the work dir's lock, passed on to the job

    def job_holds_lock(self) -> None:
        """Name the job's process groups in the lock file, so they can be stopped if this supervisor dies."""
        for fd in self.lock_fds:
            work_lock.describe(fd, self.run_id, [p.pid for p in self.procs])

    def request_stop(self, *_) -> None:
        self.stop_requested = True

    def run(self) -> None:
        spec = JobSpec.model_validate_json((run_dir(self.run_id) / "spec.json").read_text())
        record = self.registry.get(self.run_id)
        if record.terminal:  # cancelled while it was being started
            return None
        self.registry.update(self.run_id, supervisor_pid=os.getpid())
        if self.stop_requested:
            return self.finish("cancelled")
        try:
            self.launch(spec, record.log_path)
        except OSError as e:
            self.kill_all()
            return self.finish("failed", error=f"cannot start job command {spec.command[0]!r}: {e.strerror or e}")
        self.registry.update(self.run_id, where_state=ACTIVE, state="running", started_at=time.time(),
                             job_pid=self.procs[0].pid)
        first_bad = self.wait()
        self.kill_all()  # leftovers in the jobs' process groups
        if self.stop_requested:
            codes = [p.returncode for p in self.procs]
            return self.finish("cancelled", exit_code=shell_status(next((c for c in codes if c), 0)))
        if first_bad is None:
            if is_complete(spec.output):
                return self.finish("succeeded", exit_code=0)
            return self.finish("failed", error=NO_ARTIFACT, exit_code=0)
        if first_bad < 0:
            return self.finish("failed", error=f"killed by signal {-first_bad}", exit_code=shell_status(first_bad))
        error = error_line(record.log_path) or f"job exited with code {first_bad}"
        return self.finish("failed", error=error, exit_code=first_bad)

    def launch(self, spec: JobSpec, log_path: str) -> None:
        with open(log_path, "ab") as log:
            for rank in range(spec.nodes):
                self.procs.append(subprocess.Popen(
                    spec.command, env={**os.environ, "RANK": str(rank)}, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.lock_fds))
        self.job_holds_lock()

    def wait(self) -> int | None:
        """Wait for every launcher; returns the first non-zero exit status seen, if any.

        A cancel or one failed node stops the others: a torchrun waiting for a dead peer never ends.
        """
        first_bad = None
        stopping_since = None
        while True:
            codes = [p.poll() for p in self.procs]
            if first_bad is None:
                first_bad = next((c for c in codes if c), None)
            if all(c is not None for c in codes):
                return first_bad
            if stopping_since is None and (self.stop_requested or first_bad is not None):
                if self.stop_requested:
                    self.note(f"cancel requested: sent SIGTERM to the job; killing it in {self.grace_s:.0f} s")
                self.signal_all(signal.SIGTERM)
                stopping_since = time.monotonic()
            elif stopping_since is not None and time.monotonic() - stopping_since > self.grace_s:
                self.signal_all(signal.SIGKILL)
            time.sleep(POLL_S)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_all(self) -> None:
        self.signal_all(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def note(self, message: str) -> None:
        print(f"[pai-distil] {message}", flush=True)  # stdout is the run's log

    def finish(self, state: str, error: str | None = None, exit_code: int | None = None) -> None:
        self.registry.update(self.run_id, where_state=ACTIVE, state=state, error=error, exit_code=exit_code,
                             finished_at=time.time())


def supervise(make, module: str, argv: list[str] | None = None) -> int:
    """The main of a supervisor process (`python -m MODULE RUN_ID [REGISTRY]`), for any backend.

    `make(run_id, registry)` builds an object with run(), request_stop() and kill_all(). SIGTERM
    means cancel; a crash of the supervisor itself is recorded instead of leaving the run `running`.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"usage: python -m {module} RUN_ID [REGISTRY]", file=sys.stderr)
        return 2
    registry = Registry(argv[1] if len(argv) > 1 else None)
    supervisor = make(argv[0], registry)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    if hasattr(signal, "pthread_sigmask"):  # started with SIGTERM blocked (see the backends' start)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        supervisor.run()
    except BaseException as e:  # noqa: BLE001 - record why, whatever it was, instead of leaving `running`
        traceback.print_exc()
        try:
            supervisor.kill_all()
        finally:
            registry.update(argv[0], where_state=ACTIVE, state="failed", finished_at=time.time(),
                            error=f"supervisor error: {type(e).__name__}: {e}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return supervise(Supervisor, "pai_distil.backends.supervisor", argv)


if __name__ == "__main__":
    sys.exit(main())
