"""The run registry: one embedded SQLite file that the CLI and every run's supervisor share.

WAL mode and one short transaction per call let a supervisor record a run's progress while the
CLI lists or cancels runs. Reads reconcile: a run whose supervisor died without recording an
outcome is marked failed, so no run stays `running` forever.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pai_distil import paths
from pai_distil.run import work_lock
from pai_distil.core.artifacts import is_complete
from pai_distil.core.errors import UserError

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "cached")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "cached"})
ACTIVE = ("queued", "running")
SUPERVISOR_GONE = "supervisor exited unexpectedly"
REMOTE_JOB = "remote-job"  # in a run's dir: its job lives in the cloud, not under its supervisor (see _reconcile)


@dataclass
class RunRecord:
    id: str
    stage: str
    backend: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    cache_key: str | None
    work_dir: str | None
    output: str | None
    log_path: str | None
    error: str | None
    exit_code: int | None
    pipeline: str | None
    supervisor_pid: int | None
    job_pid: int | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or to now while running."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (None if self.terminal else time.time())
        return None if end is None else max(0.0, end - self.started_at)


COLUMNS = tuple(f.name for f in fields(RunRecord))
_TYPES = {"created_at": "REAL NOT NULL", "started_at": "REAL", "finished_at": "REAL", "exit_code": "INTEGER",
          "supervisor_pid": "INTEGER", "job_pid": "INTEGER", "id": "TEXT PRIMARY KEY"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs ("
    + ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    + ");\n"
    "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);\n"
    "CREATE INDEX IF NOT EXISTS runs_cache_key ON runs (cache_key, state);\n"
)


def new_run_id(stage: str) -> str:
    """Readable and sortable: `slow-thinking-20261127-081502-3fa2`."""
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as dead."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): signal 0 is all we know
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def supervisor_alive(pid: int | None, run_id: str) -> bool:
    """True while `pid` is the supervisor of `run_id`: after a reboot the pid may name another process,
    which must never be signalled (the supervisor's command line names its run)."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): signal 0 is all we know
    return run_id.encode() in argv


def outlives_supervisor(run_id: str) -> bool:
    """Whether a run's job goes on without its supervisor (a DLC job): it is then reattached, not failed."""
    return (paths.run_dir(run_id) / REMOTE_JOB).exists()


class Registry:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else paths.runs_db()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:  # a home that is a file, unwritable, or a registry that is not one
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UserError(f"cannot use the run registry {self.path} ({why}); point --home or "
                            f"${paths.ENV_HOME} at a writable directory") from None

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call; a registry that can no longer be written (a full disk, a lost
        mount) is a UserError naming the fix, not sqlite's traceback."""
        try:
            with closing(self._connect()) as db:
                yield db
        except sqlite3.OperationalError as e:
            raise UserError(f"cannot use the run registry {self.path} ({e}); free space on its disk, or point "
                            f"--home or ${paths.ENV_HOME} at a writable directory") from None

    def _connect(self) -> sqlite3.Connection:
        # autocommit: every statement is its own short transaction; wait for a busy writer
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    # -- writing --------------------------------------------------------------------------------

    def create(self, run_id: str, stage: str, backend: str, cache_key: str | None, work_dir: str | Path | None,
               output: str | Path | None, log_path: str | Path | None, pipeline: str | None = None,
               state: str = "queued") -> RunRecord:
        _check_state(state)
        now = time.time()
        record = RunRecord(
            id=run_id, stage=stage, backend=backend, state=state, created_at=now,
            started_at=now if state == "cached" else None, finished_at=now if state in TERMINAL else None,
            cache_key=cache_key, work_dir=_str(work_dir), output=_str(output), log_path=_str(log_path),
            error=None, exit_code=None, pipeline=pipeline, supervisor_pid=None, job_pid=None)
        row = asdict(record)
        with self._open() as db:
            try:
                db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           tuple(row.values()))
            except sqlite3.IntegrityError:
                raise UserError(f"run id {run_id!r} already exists; choose another") from None
        return record

    def update(self, run_id: str, *, where_state: tuple[str, ...] | None = None, **values) -> bool:
        """Set fields of a run; with `where_state`, only while it is in one of those states.

        Returns whether a row changed, so a transition can be made race-free.
        """
        unknown = sorted(k for k in values if k not in COLUMNS or k == "id")
        if unknown:
            raise ValueError(f"cannot update run field(s) {unknown}")
        if "state" in values:
            _check_state(values["state"])
        if not values:
            return False
        sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?"
        args = [_str(v) if isinstance(v, Path) else v for v in values.values()] + [run_id]
        if where_state:
            sql += f" AND state IN ({', '.join('?' * len(where_state))})"
            args += list(where_state)
        with self._open() as db:
            return db.execute(sql, args).rowcount > 0

    def remove(self, run_id: str) -> bool:
        """Delete a finished run's record (never an active one's); returns whether it was there."""
        with self._open() as db:
            return db.execute(f"DELETE FROM runs WHERE id = ? AND state IN ({', '.join('?' * len(TERMINAL))})",
                              (run_id, *sorted(TERMINAL))).rowcount > 0

    # -- reading --------------------------------------------------------------------------------

    def get(self, id_or_prefix: str) -> RunRecord:
        """A run by its id or an unambiguous prefix of it."""
        with self._open() as db:
            rows = db.execute("SELECT * FROM runs WHERE id = ?", (id_or_prefix,)).fetchall()
            if not rows and id_or_prefix:
                rows = db.execute("SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC LIMIT 6",
                                  (len(id_or_prefix), id_or_prefix)).fetchall()
        if not rows:
            raise UserError(f"no run '{id_or_prefix}'; `pai-distil runs list` shows run ids")
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise UserError(f"run id prefix '{id_or_prefix}' matches several runs ({ids}{', ...' if len(rows) > 5 else ''}); "
                            "give more of the id")
        return self._reconcile(_record(rows[0]))

    def list(self, limit: int = 50, stage: str | None = None, state: str | None = None) -> list[RunRecord]:
        """Newest first."""
        where, args = [], []
        if stage:
            where.append("stage = ?")
            args.append(stage)
        if state:
            _check_state(state)
            # reconciling may turn an active run into a failed one: filter after reconciling
            if state in ACTIVE or state == "failed":
                where.append(f"state IN ({', '.join('?' * (len(ACTIVE) + 1))})")
                args += [*ACTIVE, "failed"]
            else:
                where.append("state = ?")
                args.append(state)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, rowid DESC"
        with self._open() as db:
            rows = db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            record = self._reconcile(_record(row))
            if state is None or record.state == state:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def find_succeeded(self, cache_key: str) -> RunRecord | None:
        """The newest succeeded run with this cache key whose output is still a complete artifact (one in OSS,
        of a pai run, is checked there by the caller)."""
        with self._open() as db:
            rows = db.execute("SELECT * FROM runs WHERE cache_key = ? AND state = 'succeeded' "
                              "ORDER BY created_at DESC, rowid DESC", (cache_key,)).fetchall()
        for row in rows:
            record = _record(row)
            if record.output and (record.output.startswith("oss://") or is_complete(record.output)):
                return record
        return None

    def _reconcile(self, record: RunRecord) -> RunRecord:
        """An active run whose supervisor is gone is failed, and a job it left running is stopped; so is
        one whose work dir nothing holds (its supervisor's pid now names another process). A run whose
        job lives in the cloud stays active: `runs attach` gives it a new supervisor."""
        if record.state not in ACTIVE or not record.supervisor_pid:
            return record
        if outlives_supervisor(record.id):
            return record
        if not pid_alive(record.supervisor_pid):
            error = SUPERVISOR_GONE
            if record.work_dir and work_lock.signal_holder(record.work_dir, signal.SIGTERM, record.id):
                error += "; its job was stopped (it saved a checkpoint, which a resubmit resumes from)"
        elif record.work_dir and work_lock.lock_path(record.work_dir).exists() and work_lock.holder(record.work_dir) is None:
            error = SUPERVISOR_GONE + "; nothing of the run holds its work dir"
        else:
            return record
        # conditional: the supervisor may have recorded its outcome just before exiting
        self.update(record.id, where_state=ACTIVE, state="failed", error=error, finished_at=time.time())
        with self._open() as db:
            return _record(db.execute("SELECT * FROM runs WHERE id = ?", (record.id,)).fetchone())


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(**{c: row[c] for c in COLUMNS})


def _str(value) -> str | None:
    return None if value is None else str(value)


def _check_state(state: str) -> None:
    if state not in STATES:
        raise UserError(f"unknown run state {state!r}; choose one of: {', '.join(STATES)}")
