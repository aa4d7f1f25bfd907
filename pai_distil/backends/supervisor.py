"""The supervisor of one run, the same skeleton for every backend: `python -m MODULE RUN_ID [REGISTRY]`.

A backend's `start` spawns it detached, MODULE being the backend's own module. `Supervisor.run`
reads the run's spec, claims the run (records its pid), then calls the backend's hooks:

- `launch(spec, record)`: start the job (one process or container per node), or take over the
  job `start` submitted (pai);
- `poll(spec, record)`: wait until the job ends, following its output into the run's log; a
  cancel (SIGTERM to the supervisor) stops the job through `stop(sig)`: SIGTERM first, so it
  saves a checkpoint, SIGKILL after a grace;
- `collect(spec, record, outcome)`: record the terminal state from what `poll` returned;
- `kill_all()`: leave nothing running (after the job, and when the supervisor itself fails).

`supervise` is every supervisor's main: signals, and a crash recorded instead of a run left `running`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback

from pai_distil.core.artifacts import is_complete
from pai_distil.core.config import JobSpec
from pai_distil.core.contract import ERROR_PREFIX
from pai_distil.core.env_numbers import STOP_GRACE_S, env_number
from pai_distil.run import work_lock
from pai_distil.run.progress import log_tail
from pai_distil.run.registry import ACTIVE, Registry, RunRecord

from .base import read_spec

DEFAULT_GRACE_S = 30.0
POLL_S = 0.1
NO_ARTIFACT = "job exited 0 but wrote no complete artifact"


def error_line(lines: list[str]) -> str | None:
    """The job's own explanation: its last `pai-distil job error:` line, else its last line."""
    for line in reversed(lines):
        if ERROR_PREFIX in line:
            return line.split(ERROR_PREFIX, 1)[1].strip() or line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), None)


def shell_status(returncode: int) -> int:
    """Exit status as a shell reports it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """The skeleton (`run`) and what supervisors of local processes share (`procs`, `wait_nodes`)."""

    submitted_by_start = False  # True when `start` already launched the job: a cancel must stop it, not skip it
    job_outlives_supervisor = False  # True when the job runs on if this process dies (a DLC job): a crash then
                                     # leaves the run active for `runs attach`, never stops or fails the job

    def __init__(self, run_id: str, registry: Registry):
        self.run_id = run_id
        self.registry = registry
        self.stop_requested = False
        self.procs: list[subprocess.Popen] = []  # one per node, for a job run by local processes
        self.grace_s = env_number(STOP_GRACE_S, DEFAULT_GRACE_S)
        lock = os.environ.get(work_lock.FD_ENV, "")
        self.lock_fds = (int(lock),) if lock.isdigit() else ()  # the work dir's lock, passed on to the job

    def request_stop(self, *_) -> None:
        self.stop_requested = True

    def run(self) -> None:
        spec = read_spec(self.run_id)
        record = self.registry.get(self.run_id)
        if record.terminal:  # cancelled while it was being started
            return None
        self.registry.update(self.run_id, supervisor_pid=os.getpid())
        if self.stop_requested and not self.submitted_by_start:
            return self.finish("cancelled")
        try:
            self.launch(spec, record)
        except OSError as e:
            self.kill_all()
            return self.finish("failed", error=self.launch_error(spec, e))
        return self.collect(spec, record, self.poll(spec, record))

    # -- the hooks ----------------------------------------------------------------------------

    def launch(self, spec: JobSpec, record: RunRecord) -> None:
        raise NotImplementedError

    def launch_error(self, spec: JobSpec, e: OSError) -> str:
        return f"cannot start job command {spec.command[0]!r}: {e.strerror or e}"

    def poll(self, spec: JobSpec, record: RunRecord):
        """Wait until the job ends; returns what `collect` needs. The default: the nodes' processes."""
        first_bad = self.wait_nodes()
        self.kill_all()  # leftovers in the jobs' process groups
        return first_bad

    def stop(self, sig: int) -> None:
        """Signal the job: each node's process group."""
        for p in self.procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def collect(self, spec: JobSpec, record: RunRecord, outcome) -> None:
        raise NotImplementedError

    def kill_all(self) -> None:
        self.stop(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    # -- the shared steps ---------------------------------------------------------------------

    def job_holds_lock(self) -> None:
        """Name the job's process groups in the lock file, so they can be stopped if this supervisor dies."""
        for fd in self.lock_fds:
            work_lock.describe(fd, self.run_id, [p.pid for p in self.procs])

    def running(self, **fields) -> None:
        self.registry.update(self.run_id, where_state=ACTIVE, state="running", started_at=time.time(), **fields)

    def wait_nodes(self) -> int | None:
        """Wait for every node's process; returns the first non-zero exit status seen, if any.

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
                self.stop(signal.SIGTERM)
                stopping_since = time.monotonic()
            elif stopping_since is not None and time.monotonic() - stopping_since > self.grace_s:
                self.stop(signal.SIGKILL)
            time.sleep(POLL_S)

    def finish_output(self, output: str) -> None:
        """A job that exited 0 succeeded only if it left a complete artifact."""
        if is_complete(output):
            return self.finish("succeeded", exit_code=0)
        return self.finish("failed", error=NO_ARTIFACT, exit_code=0)

    def note(self, message: str) -> None:
        print(f"[pai-distil] {message}", flush=True)  # stdout is the run's log

    def finish(self, state: str, error: str | None = None, exit_code: int | None = None) -> None:
        self.registry.update(self.run_id, where_state=ACTIVE, state=state, error=error, exit_code=exit_code,
                             finished_at=time.time())


def supervise(make, module: str, argv: list[str] | None = None) -> int:
    """The main of a supervisor process (`python -m MODULE RUN_ID [REGISTRY]`), for any backend.

    `make(run_id, registry)` builds the Supervisor. SIGTERM means cancel; a crash of the supervisor
    itself is recorded instead of leaving the run `running`.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"usage: python -m {module} RUN_ID [REGISTRY]", file=sys.stderr)
        return 2
    registry = Registry(argv[1] if len(argv) > 1 else None)
    supervisor = make(argv[0], registry)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    if hasattr(signal, "pthread_sigmask"):  # started with SIGTERM blocked (see Backend.start)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        supervisor.run()
    except BaseException as e:  # noqa: BLE001 - record why, whatever it was, instead of leaving `running`
        traceback.print_exc()
        if supervisor.job_outlives_supervisor:
            supervisor.note(f"supervisor error: {type(e).__name__}: {e}; the job runs on: `pai-distil runs attach "
                            f"{argv[0]}` follows it again, `pai-distil runs cancel {argv[0]}` stops it")
            return 1
        try:
            supervisor.kill_all()
        finally:
            registry.update(argv[0], where_state=ACTIVE, state="failed", finished_at=time.time(),
                            error=f"supervisor error: {type(e).__name__}: {e}")
        return 1
    return 0
