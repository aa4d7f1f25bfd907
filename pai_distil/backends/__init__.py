"""Backends run a JobSpec somewhere and record its outcome in the run registry.

Every backend honours the same job contract (DESIGN.md), so a stage behaves the same on this
machine, in Docker or on PAI. Backend modules are imported on demand to keep the CLI fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pai_distil.core.errors import UserError

if TYPE_CHECKING:
    from pai_distil.run.registry import Registry, RunRecord
    from pai_distil.core.config import JobSpec

BACKENDS = ("process", "local", "pai")


class Backend(Protocol):
    name: str

    def start(self, spec: JobSpec, record: RunRecord) -> RunRecord:
        """Start the job and return at once; the outcome arrives in the registry."""

    def cancel(self, record: RunRecord) -> RunRecord:
        """Stop the job (it may save a checkpoint first) and return its terminal record."""


def get_backend(name: str, registry: Registry | None = None, **options) -> Backend:
    """The backend called `name`; `options` are the pai backend's (download, max_restarts)."""
    given = [k for k, v in options.items() if v not in (None, False)]
    if given and name != "pai":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --backend pai only; remove it or "
                        "use --backend pai")
    if name == "process":
        from .process import ProcessBackend

        return ProcessBackend(registry)
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(registry)
    if name == "pai":
        from .pai import PaiBackend

        return PaiBackend(registry, **options)
    raise UserError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
