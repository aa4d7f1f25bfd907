"""The `process` backend: the job runs as subprocesses of this machine, watched by a supervisor.

`start` returns at once: a detached supervisor (`python -m pai_distil.backends.process RUN_ID
REGISTRY`) starts one launcher per node (RANK = node index), each in its own process group so that
a stop reaches torchrun's workers too, appends their output to the run's log and records the
outcome. The supervisor and its job see only the job contract (`contract_env`), the secrets the
config names and harmless variables (`job_env`), never the rest of the client's environment.

The job spec's command names `python`, the job image's interpreter; here the job runs with this
machine's, the one running the client (`host_command`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from pai_distil.core.config import JobSpec
from pai_distil.run.registry import RunRecord

from .base import Backend, free_port
from .job_env import contract_env, job_environment
from .supervisor import Supervisor, error_line, log_tail, shell_status, supervise

SUPERVISOR_MODULE = "pai_distil.backends.process"


def host_command(command: list[str]) -> list[str]:
    """The job command run on this machine: the image's `python` becomes the client's interpreter."""
    if command and command[0] == "python":
        return [sys.executable, *command[1:]]
    return list(command)


class ProcessBackend(Backend):
    name = "process"
    supervisor_module = SUPERVISOR_MODULE

    @classmethod
    def job_has_package(cls, name: str) -> bool:
        return importlib.util.find_spec(name) is not None  # the job runs on this Python (`host_command`)

    def _launch(self, spec: JobSpec, record: RunRecord, config_path: Path) -> dict[str, str]:
        Path(spec.output).mkdir(parents=True, exist_ok=True)
        Path(spec.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return job_environment(spec.config, contract_env(spec, config_path, master_port=free_port()))


BACKEND = ProcessBackend


class ProcessSupervisor(Supervisor):
    """Runs the job's command once per node on this machine."""

    def launch(self, spec: JobSpec, record: RunRecord) -> None:
        command = host_command(spec.command)
        with open(record.log_path, "ab") as log:
            for rank in range(spec.nodes):
                self.procs.append(subprocess.Popen(
                    command, env={**os.environ, "RANK": str(rank)}, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.lock_fds))
        self.job_holds_lock()
        self.running(job_pid=self.procs[0].pid)

    def collect(self, spec: JobSpec, record: RunRecord, first_bad: int | None) -> None:
        if self.stop_requested:
            codes = [p.returncode for p in self.procs]
            return self.finish("cancelled", exit_code=shell_status(next((c for c in codes if c), 0)))
        if first_bad is None:
            return self.finish_output(spec.output)
        if first_bad < 0:
            return self.finish("failed", error=f"killed by signal {-first_bad}", exit_code=shell_status(first_bad))
        error = error_line(log_tail(record.log_path)) or f"job exited with code {first_bad}"
        return self.finish("failed", error=error, exit_code=first_bad)


def main(argv: list[str] | None = None) -> int:
    return supervise(ProcessSupervisor, SUPERVISOR_MODULE, argv)


if __name__ == "__main__":
    sys.exit(main())
