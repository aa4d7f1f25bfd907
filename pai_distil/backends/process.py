"""The `process` backend: the job runs as subprocesses of this machine, watched by a supervisor.

`start` returns at once: a detached supervisor (its own session, so Ctrl-C in the terminal
does not reach it) runs the job, appends its output to the run's log and records the outcome
in the registry. The job-contract environment is built by `contract_env`, which the Docker
backend reuses with container paths; the supervisor and its job see only that, the secrets the
config names and harmless variables (`job_env`), never the rest of the client's environment.
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

from pai_distil.core.contract import input_env_name

from pai_distil.run import work_lock
from pai_distil.core.errors import RunFailed
from ..paths import run_dir
from pai_distil.run.registry import ACTIVE, Registry, RunRecord
from pai_distil.core.config import JobSpec
from .job_env import job_environment

SUPERVISOR_MODULE = "pai_distil.backends.supervisor"
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


def contract_env(spec: JobSpec, config_path: str | Path, *, master_addr: str = "127.0.0.1",
                 master_port: int = 29500, rank: int = 0, inputs: dict[str, str] | None = None,
                 output: str | None = None, checkpoint_dir: str | None = None) -> dict[str, str]:
    """The job contract's variables (DESIGN.md); paths may be overridden for a container's view."""
    env = {
        "PAI_DISTIL_STAGE": spec.stage,
        "PAI_DISTIL_RUN_ID": spec.run_id,
        "PAI_DISTIL_CONFIG": str(config_path),
        **{input_env_name(name): str(path) for name, path in (inputs or spec.inputs).items()},
        "PAI_DISTIL_OUTPUT": str(output or spec.output),
        "PAI_DISTIL_CHECKPOINT_DIR": str(checkpoint_dir or spec.checkpoint_dir),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(spec.nodes),
        "RANK": str(rank),
        "NPROC_PER_NODE": str(spec.procs_per_node or 1),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(spec.env)
    return env


def write_run_files(spec: JobSpec, directory: Path) -> Path:
    """Write the job spec and the stage config into the run directory; returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(spec.model_dump_json(indent=1))
    config_path = directory / CONFIG_FILE
    config_path.write_text(json.dumps(spec.config, indent=1))
    return config_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class ProcessBackend:
    name = "process"

    def __init__(self, registry: Registry | None = None):
        self.registry = registry or Registry()

    def start(self, spec: JobSpec, record: RunRecord) -> RunRecord:
        config_path = write_run_files(spec, run_dir(record.id))
        Path(spec.output).mkdir(parents=True, exist_ok=True)
        Path(spec.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        env = job_environment(spec.config, contract_env(spec, config_path, master_port=free_port()))
        return self.spawn_supervisor(record, SUPERVISOR_MODULE, env)

    def spawn_supervisor(self, record: RunRecord, module: str, env: dict[str, str]) -> RunRecord:
        """Start `python -m MODULE RUN_ID REGISTRY` detached, its output appended to the run's log."""
        log_path = Path(record.log_path or run_dir(record.id) / LOG_FILE)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        if record.log_path != str(log_path):
            self.registry.update(record.id, log_path=str(log_path))  # before the supervisor reads it
        argv = [sys.executable, "-m", module, record.id, str(self.registry.path)]
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

    def cancel(self, record: RunRecord, wait_s: float = CANCEL_WAIT_S) -> RunRecord:
        record = self.registry.get(record.id)
        if record.terminal:
            return record
        if record.supervisor_pid is None:  # queued, never started
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


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
