"""`submit` and `Stage`: one stage of the recipe run as a job from Python, through the same run layer
(`pai_distil.run.submission`) as `pai-distil submit`, so a config, its cache key and its run are the
same whichever way they were started. Quiet: nothing is printed unless a run is waited on with `show`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from pai_distil.sdk.run import Run

Config = Mapping[str, Any] | str | Path | None
Overrides = Mapping[str, Any] | Sequence[str] | None


def dotlist(overrides: Overrides) -> list[str]:
    """Overrides as `KEY.PATH=VALUE` strings: given so, or from a mapping of dotted keys to Python values
    (written as JSON, which YAML reads back as the same value)."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(pair) for pair in overrides]


def _config_data(config: Config, overrides: Overrides) -> tuple[dict, str]:
    """The plain config (a mapping, or read from a YAML / JSON file) with the overrides set, and its name
    for error messages."""
    from pai_distil.core.config import read_mapping
    from pai_distil.core.config.overrides import apply

    if isinstance(config, (str, Path)):
        data, where = read_mapping(config), f"config {config}"
    else:
        data, where = dict(config or {}), "config"
    pairs = dotlist(overrides)
    return apply(data, pairs), f"{where} with overrides" if pairs else where


class Stage:
    """One stage of the recipe with its config and inputs, ready to check or submit.

    Args:
        name (str): the stage, e.g. `slow-thinking` (`pai-distil stages` lists them).
        config (Mapping | str | Path, optional): the stage's config, or the path of a YAML / JSON file
            holding it. Defaults to the stage's defaults.
        inputs (Mapping[str, str | Path | Run], optional): the stage's inputs by name: a file, an artifact
            directory, an `oss://` artifact, a run id or a `Run` (its output). Defaults to none.
        overrides (Mapping[str, Any] | Sequence[str], optional): fields set over `config`, as
            `{"train.max_steps": 2}` or `["train.max_steps=2"]`. Defaults to none.

    Raises:
        UserError: an unknown stage.
    """

    def __init__(self, name: str, config: Config = None, inputs: Mapping[str, str | Path | Run] | None = None,
                 overrides: Overrides = None):
        from pai_distil.core.stages import get_stage

        self.name = get_stage(name).name
        self.config = config
        self.inputs = {k: v.id if isinstance(v, Run) else str(v) for k, v in (inputs or {}).items()}
        self.overrides = dotlist(overrides)

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, inputs={self.inputs!r})"

    def prepare(self, *, backend: str = "process", nodes: int = 1, procs_per_node: int | None = None,
                resources: Mapping[str, Any] | None = None):
        """Validate the config and inputs for `backend` and build the job spec; starts nothing.

        Returns:
            pai_distil.run.submission.Prepared: the validated config, the job spec, the cache key.

        Raises:
            UserError: a config field, an input or the job's shape is wrong (the message names it and the fix).
        """
        from pai_distil.core.config import Resources
        from pai_distil.run.submission import prepare

        data, where = _config_data(self.config, self.overrides)
        return prepare(self.name, data, self.inputs, where=where, nodes=nodes, procs_per_node=procs_per_node,
                       resources=Resources(**(resources or {})), backend=backend)

    def spec(self, **shape) -> dict:
        """The job spec `submit` would start, as JSON data (what `pai-distil submit --dry-run` prints);
        `shape` as `prepare` takes it."""
        return self.prepare(**shape).spec.model_dump(mode="json")

    def submit(self, *, backend: str = "process", nodes: int = 1, procs_per_node: int | None = None,
               resources: Mapping[str, Any] | None = None, force: bool = False, **backend_options) -> Run:
        """Start the stage as a job and return at once (a cache hit returns its finished run).

        Args:
            backend (str, optional): `process` (a subprocess here), `local` (Docker here) or `pai`
                (PAI-DLC). Defaults to `process`.
            nodes (int, optional): nodes the job runs on. Defaults to 1.
            procs_per_node (int, optional): processes per node. Defaults to one, or a pai node's GPUs.
            resources (Mapping, optional): per node: `gpu`, `cpu`, `memory_gb`, `shared_memory_gb`,
                `instance_type`. Defaults to none asked for.
            force (bool, optional): run again although config and inputs are unchanged. Defaults to False.
            **backend_options: the pai backend's own (`download`, `max_restarts`, `no_preflight`,
                `price_per_hour`, `max_runtime`, `no_plan`).

        Returns:
            Run: the run, queued or running (or `cached`); `run.wait()` blocks until it ends.

        Raises:
            UserError: the config, an input or an option is wrong, or the backend cannot start the job.
        """
        from pai_distil.run.submission import execute

        prep = self.prepare(backend=backend, nodes=nodes, procs_per_node=procs_per_node, resources=resources)
        record = execute(prep, backend, force=force, detach=True, console=Console(quiet=True), **backend_options)
        return Run(record.id)


def submit(stage: str, config: Config = None, inputs: Mapping[str, str | Path | Run] | None = None, *,
           overrides: Overrides = None, backend: str = "process", force: bool = False, **job) -> Run:
    """Run one stage as a job, as `pai-distil submit` does, and return at once.

    Example:
        >>> run = submit("slow-thinking", config={"train": {"max_steps": 2}}, inputs={"cots": "cots.jsonl"})
        >>> run.wait().output

    Args:
        stage (str): the stage, e.g. `slow-thinking`.
        config (Mapping | str | Path, optional): the config, or a YAML / JSON file of it. Defaults to none.
        inputs (Mapping[str, str | Path | Run], optional): the inputs by name. Defaults to none.
        overrides (Mapping[str, Any] | Sequence[str], optional): fields set over `config`. Defaults to none.
        backend (str, optional): `process`, `local` or `pai`. Defaults to `process`.
        force (bool, optional): run again although nothing changed. Defaults to False.
        **job: `nodes`, `procs_per_node`, `resources` and the pai backend's options (see `Stage.submit`).

    Returns:
        Run: the run just started, or the cached run when nothing changed.

    Raises:
        UserError: the stage, config, an input or an option is wrong (the message names it and the fix).
    """
    return Stage(stage, config, inputs, overrides).submit(backend=backend, force=force, **job)
