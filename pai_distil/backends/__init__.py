"""Backends run a JobSpec somewhere and record its outcome in the run registry.

Every backend honours the same job contract (docs/architecture.md), so a stage behaves the same on this
machine, in Docker or on PAI. Each is a `base.Backend`, `BACKEND` in the module named after
it (`BACKENDS` in core.config.job lists them); modules are imported on demand to keep the CLI fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from pai_distil.core.errors import UserError

if TYPE_CHECKING:
    from pai_distil.run.registry import Registry

    from .base import Backend


def get_backend(name: str, registry: Registry | None = None, **options) -> Backend:
    """The backend called `name`; `options` are the pai backend's (download, max_restarts)."""
    from pai_distil.core.config.job import BACKENDS

    check_options(name, **options)
    backend = backend_class(name)
    return backend(registry, **options) if backend.options else backend(registry)


def check_options(name: str, **options) -> None:
    """A UserError when pai's own options (download, max_restarts) are given to another backend."""
    given = [k for k, v in options.items() if v not in (None, False)]
    if given and name != "pai":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --backend pai only; remove it or "
                        "use --backend pai")


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called `name`, for what it can tell before any run (`job_has_package`)."""
    from pai_distil.core.config.job import BACKENDS

    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    return import_module(f"{__name__}.{name}").BACKEND
