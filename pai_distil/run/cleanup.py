"""Removing runs and the disk they hold (`runs rm`, `runs gc`), never an artifact still in use.

A work directory is shared: every run with the same cache key works in it, a cached run's output
*is* the earlier run's output, and a later run may have read it as an input. So a work dir goes
only when no remaining run names it (its work dir or output: the cache index is these records) and
no succeeded run took anything in it as an input (its spec's inputs), and when nothing holds its
lock (a job still writing). Outputs in OSS are never touched: they are the user's cloud storage.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pai_distil import paths
from pai_distil.core.errors import UserError
from pai_distil.run import work_lock
from pai_distil.run.registry import Registry, RunRecord

ALL = 1 << 62  # `Registry.list` limit that means every run
SPEC_FILE = "spec.json"  # as backends.base writes it; read here without importing the backends
REPLACED = ".replaced"  # `.NAME.replaced`: a work dir `--force` set aside (run.submission._set_aside)


@dataclass
class Removal:
    """What `remove` / `collect` removed (or, on a dry run, would remove), and what they kept and why."""

    runs: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # work dir -> why it stays
    freed_bytes: int = 0

    def as_dict(self) -> dict:
        return {"runs": self.runs, "dirs": self.dirs, "kept": self.kept, "freed_bytes": self.freed_bytes}


def remove(run_ids: list[str], *, registry: Registry | None = None, dry_run: bool = False) -> Removal:
    """Remove finished runs: their records, their run dirs (spec, log), and their work dirs unless another
    run still uses them. Refuses an active run (cancel it first)."""
    registry = registry or Registry()
    records = [registry.get(r) for r in run_ids]
    for r in records:
        if not r.terminal:
            raise UserError(f"run {r.id} is {r.state}; stop it first with `pai-distil runs cancel {r.id}`")
    return _remove(registry, records, dry_run)


def collect(*, registry: Registry | None = None, failed: bool = False, dry_run: bool = False) -> Removal:
    """Free what no run uses: work and run dirs whose runs are gone, and leftovers of interrupted `--force`
    reruns; with `failed`, failed and cancelled runs too (their checkpoints, which a resubmit would resume)."""
    registry = registry or Registry()
    records = registry.list(limit=ALL)
    doomed = [r for r in records if failed and r.state in ("failed", "cancelled")]
    removal = _remove(registry, doomed, dry_run)
    ids = {r.id for r in records}
    runs_root = paths.home() / "runs"
    orphans = [d for d in _children(runs_root) if d.name not in ids]
    work_root = paths.home() / "work"
    orphans += [d for d in _children(work_root) if d.name.startswith(".") and d.name.endswith(REPLACED)
                and work_lock.holder(d.with_name(d.name[1:-len(REPLACED)])) is None]  # a --force submit's, until it starts
    for d in orphans:
        _drop(d, removal, dry_run)
    kept = {r.id for r in records} - set(removal.runs)
    used = _uses(registry, kept)
    for d in _children(work_root):
        if not d.name.startswith(".") and str(d) not in removal.dirs:
            _drop_work_dir(d, used, removal, dry_run)
    return removal


def _remove(registry: Registry, records: list[RunRecord], dry_run: bool) -> Removal:
    removal = Removal()
    gone = {r.id for r in records}
    used = _uses(registry, {r.id for r in registry.list(limit=ALL)} - gone)
    for r in records:
        _drop(paths.run_dir(r.id), removal, dry_run)
        if r.work_dir and Path(r.work_dir).is_dir() and str(Path(r.work_dir)) not in removal.dirs:
            _drop_work_dir(Path(r.work_dir), used, removal, dry_run)
        if dry_run or registry.remove(r.id):
            removal.runs.append(r.id)
    return removal


def _uses(registry: Registry, run_ids: set[str]) -> dict[str, str]:
    """Work dir -> why it stays: named by one of these runs, or holding an input of a succeeded one."""
    used: dict[str, str] = {}
    for r in registry.list(limit=ALL):
        if r.id not in run_ids:
            continue
        for path in (r.work_dir, r.output):
            if (work := work_dir_of(path)) is not None:
                used.setdefault(work, f"run {r.id} ({r.state}) uses it")
        if r.state in ("succeeded", "cached"):
            for source in _spec_inputs(r.id):
                if (work := work_dir_of(source)) is not None:
                    used.setdefault(work, f"run {r.id} read it as an input")
    return used


def work_dir_of(path: str | None) -> str | None:
    """The work dir (`HOME/work/NAME`) a local path lies in, or None."""
    if not path or "://" in path:
        return None
    root = (paths.home() / "work").resolve()
    try:
        rel = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    return str(root / rel.parts[0]) if rel.parts else None


def _spec_inputs(run_id: str) -> list[str]:
    try:
        spec = json.loads((paths.run_dir(run_id) / SPEC_FILE).read_text())
    except (OSError, ValueError):  # a cached run has no spec; a damaged one names nothing we can trust
        return []
    inputs = spec.get("inputs") if isinstance(spec, dict) else None
    return [v for v in inputs.values() if isinstance(v, str)] if isinstance(inputs, dict) else []


def _drop_work_dir(work: Path, used: dict[str, str], removal: Removal, dry_run: bool) -> None:
    why = used.get(str(work.resolve()))
    if why is not None:
        removal.kept[str(work)] = why
        return
    fd = work_lock.try_lock(work)
    if fd is None:
        removal.kept[str(work)] = "a job still holds it"
        return
    try:
        _drop(work, removal, dry_run)
        if not dry_run:
            work_lock.lock_path(work).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _drop(path: Path, removal: Removal, dry_run: bool) -> None:
    if not path.exists():
        return
    removal.freed_bytes += _size(path)
    removal.dirs.append(str(path))
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _children(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
