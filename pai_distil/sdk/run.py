"""`Run`: a handle on one run, for Python code that submits a stage and waits for it.

Why a handle rather than the registry's record: a record is a snapshot, while a notebook holds on
to a run for minutes or days; every property reads the registry again, so `run.state` is always
the run's state now, whoever changed it (its supervisor, `pai-distil runs cancel` elsewhere).
"""

from __future__ import annotations

import time

from rich.console import Console

from pai_distil.core.errors import RunFailed
from pai_distil.run import progress as run_progress
from pai_distil.run.registry import Registry, RunRecord

POLL_S = 0.5
FINISHED = ("succeeded", "cached")


class Run:
    """One run of a stage, as the run registry records it.

    Example:
        >>> run = pai_distil.runs.get("slow-thinking-20261207-101502-3fa2")
        >>> run.wait().output
        '/home/me/.pai-distil/work/slow-thinking-0a220b81a9e7f8c1/output'
    """

    def __init__(self, run_id: str, registry: Registry | None = None):
        self._registry = registry or Registry()
        self.id = self._registry.get(run_id).id  # a unique prefix names the whole id from here on

    def __repr__(self) -> str:
        return f"Run({self.id!r}, state={self.state!r})"

    @property
    def record(self) -> RunRecord:
        """Every field the registry records of the run (state, times, paths, error), read now."""
        return self._registry.get(self.id)

    @property
    def stage(self) -> str:
        return self.record.stage

    @property
    def state(self) -> str:
        """`queued`, `running`, `succeeded`, `cached` (a cache hit), `failed` or `cancelled`."""
        return self.record.state

    @property
    def done(self) -> bool:
        """Whether the run has ended, one way or another."""
        return self.record.terminal

    @property
    def output(self) -> str | None:
        """The run's artifact (a local directory, or `oss://...` for a pai run left in OSS) once it has
        succeeded or was a cache hit; None before, and for a run that failed."""
        record = self.record
        return record.output if record.state in FINISHED else None

    @property
    def error(self) -> str | None:
        """Why the run failed: the job's own last error line, or the supervisor's."""
        return self.record.error

    @property
    def progress(self) -> run_progress.Progress | None:
        """How far the job has got (training step, loss, tokens/s, ETA; or a task's count), from its log."""
        record = self.record
        return run_progress.from_log(record.log_path, record.started_at, record.state == "running")

    def wait(self, timeout: float | None = None, *, show: bool = False) -> Run:
        """Block until the run ends.

        Args:
            timeout (float, optional): seconds to wait at most. Defaults to None (no limit).
            show (bool, optional): print the job's log and live progress bars on stderr while waiting, as
                `pai-distil submit` does (Ctrl-C then cancels the run, as there). Defaults to False.

        Returns:
            Run: this run, ended successfully (`state` is `succeeded` or `cached`).

        Raises:
            RunFailed: the run failed or was cancelled; the message carries the job's error line.
            TimeoutError: the run had not ended after `timeout` seconds (it goes on running).
        """
        from pai_distil.backends import get_backend

        record = self.record
        if not record.terminal:  # a DLC job whose supervisor died gets a new one, or it would never end here
            get_backend(record.backend, self._registry).attach(record)
        if show:
            from pai_distil.run.follow import follow

            follow(self.id, registry=self._registry, console=Console(stderr=True, highlight=False))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (record := self.record).terminal:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} still {record.state} after {timeout} s")
            time.sleep(POLL_S)
        if record.state not in FINISHED:
            raise RunFailed(f"run {record.id} ({record.stage}) {record.state}: "
                            f"{record.error or f'exit code {record.exit_code}'}")
        return self

    def logs(self) -> str:
        """The run's log as the job wrote it so far (progress lines included).

        Raises:
            UserError: the run has no log yet.
        """
        from pai_distil.run.follow import iter_log

        return "".join(line + "\n" for line in iter_log(self.record, False, self._registry))

    def cancel(self) -> Run:
        """Stop the run; a training job saves a checkpoint first, which a resubmit resumes from.

        Returns:
            Run: this run, now ended (`cancelled`, or how it ended before the cancel arrived).
        """
        from pai_distil.backends import get_backend

        record = self.record
        if not record.terminal:
            get_backend(record.backend, self._registry).cancel(record)
        return self
