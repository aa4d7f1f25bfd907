"""The one shape of every backend: what `start` and `cancel` do, whatever runs the job.

`start(spec, record)` is a template, the same for every backend; each fills two hooks:

1. `_prepare(spec)`: the checks that need nothing written (a Docker engine, an image, the PAI
   config); it returns the spec as it will run (with its image, say);
2. the run files: the spec and the stage config, in the run's directory (`write_run_files`);
3. `_launch(spec, record, config_path)`: what starts now (the output dirs made, the data uploaded
   and the DLC job submitted); it returns the supervisor's environment;
4. the supervisor, `python -m <supervisor_module> RUN_ID REGISTRY`, started detached: its own
   session (Ctrl-C in the terminal does not reach it), its output appended to the run's log.

A UserError in 1-3 marks the run failed before it is raised. `cancel(record)` sends the
supervisor SIGTERM (it stops the job, which may save a checkpoint first), kills what is left if it
does not answer, then calls `_cancelled(record)` for the backend's own cleanup (pai: StopJob by the
saved job id, which also covers a supervisor that died). A backend whose job outlives its supervisor
(`job_outlives_supervisor`: a DLC job) is detached from, never cancelled, by Ctrl-C, and `attach(record)`
gives such a run a new supervisor after a crash or a reboot. The job-contract
environment and the secrets a job is handed come from `job_env`, the same rules for every backend.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from pai_distil.core.config import JobSpec
from pai_distil.core.errors import RunFailed, UserError
from pai_distil.run import work_lock
from pai_distil.run.registry import ACTIVE, REMOTE_JOB, Registry, RunRecord, supervisor_alive

from ..paths import run_dir

SPEC_FILE = "spec.json"
CONFIG_FILE = "config.json"
LOG_FILE = "job.log"
CANCEL_WAIT_S = 60.0  # the supervisor gives the job 30 s to checkpoint, then kills it

# Started through a short-lived intermediate, the supervisor is nobody's child here: no zombie
# is left in a long-lived client, and it outlives a `submit --detach` that exits at once.
_DETACH = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
null = os.open(os.devnull, os.O_RDONLY)
actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]
print(os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions, setsid=True))
"""


def write_run_files(spec: JobSpec, directory: Path) -> Path:
    """Write the job spec and the stage config into the run directory; returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(spec.model_dump_json(indent=1))
    config_path = directory / CONFIG_FILE
    config_path.write_text(json.dumps(spec.config, indent=1))
    return config_path


def read_spec(run_id: str) -> JobSpec:
    """The spec `start` wrote for a run, as its supervisor reads it."""
    return JobSpec.model_validate_json((run_dir(run_id) / SPEC_FILE).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """Runs a JobSpec somewhere and records its outcome in the run registry (see the module's doc)."""

    name: str
    supervisor_module: str
    options: tuple[str, ...] = ()  # the backend's own keyword options (`get_backend` refuses them elsewhere)
    job_outlives_supervisor = False  # True when the job runs on without its supervisor (pai: a DLC job)

    def __init__(self, registry: Registry | None = None):
        self.registry = registry or Registry()

    # -- the public methods -------------------------------------------------------------------

    @classmethod
    def job_has_package(cls, name: str) -> bool | None:
        """Whether the job's Python will import package `name`; None where this machine cannot tell (a job
        image may be any image: the job itself then refuses a missing package in one line at its start)."""
        return None

    @classmethod
    def hands_secrets(cls) -> bool:
        """Whether the job is handed, from this machine's environment, the variables its config's
        api_key_env fields name: then `validate` checks them here."""
        return True

    def start(self, spec: JobSpec, record: RunRecord) -> RunRecord:
        """Start the job and return at once; the outcome arrives in the registry."""
        try:
            spec = self._prepare(spec)
            config_path = write_run_files(spec, run_dir(record.id))
            env = self._launch(spec, record, config_path)
        except UserError as e:
            self._fail(record, e.message)
            raise
        return self._spawn_supervisor(record, env)

    def cancel(self, record: RunRecord, wait_s: float = CANCEL_WAIT_S) -> RunRecord:
        """Stop the job (it may save a checkpoint first) and return its terminal record."""
        record = self._stop_supervisor(record, wait_s)
        self._cancelled(record)
        return record

    def attach(self, record: RunRecord) -> RunRecord:
        """Make sure a live supervisor follows an active run: a job that outlives its supervisor gets a
        new one (after a crash, a reboot, a killed terminal); returns the record as it now is."""
        record = self.registry.get(record.id)
        if record.terminal or not self.job_outlives_supervisor or supervisor_alive(record.supervisor_pid, record.id):
            return record
        return self._spawn_supervisor(record, dict(os.environ))

    def tensorboard(self, record: RunRecord) -> tuple[Path | None, str | None]:
        """(the run's TensorBoard event folder on this machine, or None; where else to see them, or None):
        `runs tensorboard` starts TensorBoard on the folder. A backend whose output stays elsewhere (pai, in
        OSS) names where its platform shows them."""
        if not record.output or record.output.startswith("oss://"):
            return None, None
        return Path(record.output) / "tensorboard", None

    # -- the hooks ----------------------------------------------------------------------------

    def _prepare(self, spec: JobSpec) -> JobSpec:
        """Checks before anything is written; returns the spec as it will run."""
        return spec

    def _launch(self, spec: JobSpec, record: RunRecord, config_path: Path) -> dict[str, str]:
        """Start what starts before the supervisor; returns the supervisor's environment."""
        raise NotImplementedError

    def _cancelled(self, record: RunRecord) -> None:
        """The backend's cleanup once a cancel is recorded."""

    # -- the shared steps ---------------------------------------------------------------------

    def _fail(self, record: RunRecord, error: str) -> None:
        self.registry.update(record.id, where_state=ACTIVE, state="failed", error=error, finished_at=time.time())

    def _spawn_supervisor(self, record: RunRecord, env: dict[str, str]) -> RunRecord:
        """Start `python -m MODULE RUN_ID REGISTRY` detached, its output appended to the run's log."""
        log_path = Path(record.log_path or run_dir(record.id) / LOG_FILE)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        if record.log_path != str(log_path):
            self.registry.update(record.id, log_path=str(log_path))  # before the supervisor reads it
        if self.job_outlives_supervisor:
            (run_dir(record.id) / REMOTE_JOB).touch()
        argv = [sys.executable, "-m", self.supervisor_module, record.id, str(self.registry.path)]
        lock = work_lock.held_fd(record.work_dir)  # handed on: the supervisor holds the work dir from now on
        if lock is not None:
            env = {**env, work_lock.FD_ENV: str(lock)}
        with _sigterm_blocked():
            spawned = subprocess.run([sys.executable, "-I", "-S", "-c", _DETACH, str(log_path), *argv], env=env,
                                     stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                     pass_fds=() if lock is None else (lock,))
        if spawned.returncode != 0 or not spawned.stdout.strip().isdigit():
            error = f"could not start the supervisor: {(spawned.stderr.strip().splitlines() or ['?'])[-1]}"
            self.registry.update(record.id, state="failed", error=error, finished_at=time.time())
            raise RunFailed(f"run {record.id} failed: {error}")
        self.registry.update(record.id, supervisor_pid=int(spawned.stdout))
        return self.registry.get(record.id)

    def _stop_supervisor(self, record: RunRecord, wait_s: float) -> RunRecord:
        record = self.registry.get(record.id)
        if record.terminal:
            return record
        if not supervisor_alive(record.supervisor_pid, record.id):  # never started, or died: nothing to signal
            self.registry.update(record.id, where_state=ACTIVE, state="cancelled", finished_at=time.time())
            return self.registry.get(record.id)
        _signal(record.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            record = self.registry.get(record.id)
            if record.terminal:
                return record
            time.sleep(0.1)
        # the supervisor did not answer: stop everything ourselves
        if record.job_pid:
            _signal(record.job_pid, signal.SIGKILL, group=True)
        _signal(record.supervisor_pid, signal.SIGKILL)
        self.registry.update(record.id, where_state=ACTIVE, state="cancelled", finished_at=time.time(),
                             error=f"did not stop within {wait_s:.0f} s of the cancel; killed")
        return self.registry.get(record.id)


@contextmanager
def _sigterm_blocked():
    """Children inherit the signal mask: the supervisor starts with SIGTERM blocked and unblocks
    it once its handler is installed, so a cancel that arrives early is delivered, not fatal."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
