"""`runs`: the run registry from Python, as `pai-distil runs` shows it (`runs.list()`, `runs.get(id)`)."""

from __future__ import annotations

from pai_distil.run.cleanup import Removal
from pai_distil.run.registry import Registry
from pai_distil.sdk.run import Run


def get(run_id: str) -> Run:
    """The run with this id (or a unique prefix of it).

    Raises:
        UserError: no such run, or a prefix that names several.
    """
    return Run(run_id)


def rm(*run_ids: str, dry_run: bool = False) -> Removal:
    """Remove finished runs with their logs and work dirs, keeping any work dir another run still uses.

    Returns:
        Removal: the runs and folders removed (or that would be, on a dry run), the folders kept and why.

    Raises:
        UserError: a run is still active (cancel it first), or no such run.
    """
    from pai_distil.run.cleanup import remove

    return remove(list(run_ids), dry_run=dry_run)


def gc(*, failed: bool = False, dry_run: bool = False) -> Removal:
    """Free the disk no run uses (`pai-distil runs gc`); with `failed`, failed and cancelled runs go too.

    Returns:
        Removal: what was removed and what was kept, and why.
    """
    from pai_distil.run.cleanup import collect

    return collect(failed=failed, dry_run=dry_run)


def list(stage: str | None = None, state: str | None = None, limit: int = 50) -> list[Run]:  # noqa: A001 - `runs.list()`
    """Recorded runs, newest first.

    Args:
        stage (str, optional): only runs of this stage. Defaults to all.
        state (str, optional): only runs in this state (`running`, `succeeded`, ...). Defaults to all.
        limit (int, optional): the newest N. Defaults to 50.

    Returns:
        list[Run]: the runs.
    """
    registry = Registry()
    return [Run(r.id, registry) for r in registry.list(limit=limit, stage=stage, state=state)]
