"""`Pipeline`: a pipeline file run from Python, through the same run layer (`pai_distil.run.pipeline`)
as `pai-distil run`: every stage validated before the first starts, unchanged stages cache hits."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pai_distil.sdk.run import Run
from pai_distil.sdk.stage import Overrides, dotlist


class Pipeline:
    """A pipeline file: stages whose outputs feed later stages' inputs.

    Example:
        >>> runs = Pipeline.from_yaml("examples/slow-thinking.yaml").run(overrides={"student.train.max_steps": 20})
        >>> runs["student"].output
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Pipeline({str(self.path)!r})"

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """The pipeline in a YAML (or JSON) file, checked now.

        Raises:
            UserError: the file, a stage's config or an input is wrong (the message names it and the fix).
        """
        pipeline = cls(path)
        pipeline.validate()
        return pipeline

    def validate(self, overrides: Overrides = None, backend: str | None = None) -> list[str]:
        """Check every stage as `pai-distil validate` does; returns the checks' notes.

        Raises:
            UserError: what is wrong, in one line.
        """
        from pai_distil.run import pipeline

        notes: list[str] = []
        pipeline.load(self.path, backend, say=notes.append, overrides=dotlist(overrides))
        return notes

    def stages(self, overrides: Overrides = None) -> list[str]:
        """The stage ids in the order they run."""
        from pai_distil.run import pipeline

        return pipeline.order(pipeline.load(self.path, overrides=dotlist(overrides)))

    def run(self, overrides: Overrides = None, *, backend: str | None = None, force: bool = False,
            show: bool = False, download: bool = False, max_restarts: int | None = None) -> dict[str, Run]:
        """Run every stage in dependency order and wait for the last.

        Args:
            overrides (Mapping[str, Any] | Sequence[str], optional): fields set per stage id, as
                `{"student.train.max_steps": 20}` or `["student.train.max_steps=20"]`. Defaults to none.
            backend (str, optional): `process`, `local` or `pai`. Defaults to the pipeline's.
            force (bool, optional): rerun every stage, cached or not. Defaults to False.
            show (bool, optional): print each stage's log and progress on stderr. Defaults to False.
            download (bool, optional): pai: bring every stage's output home. Defaults to False.
            max_restarts (int, optional): pai: resubmit a preempted job up to N times. Defaults to the config's.

        Returns:
            dict[str, Run]: stage id -> its run, all succeeded or cached.

        Raises:
            UserError: a stage's config or input is wrong; nothing was started.
            RunFailed: a stage failed; the stages after it were not started.
        """
        from pai_distil.run import pipeline

        console = Console(stderr=True, highlight=False) if show else Console(quiet=True)
        records = pipeline.run(self.path, backend=backend, force=force, console=console, download=download,
                               max_restarts=max_restarts, overrides=dotlist(overrides))
        return {sid: Run(record.id) for sid, record in records.items()}
