"""Where pai-distil keeps its state: `~/.pai-distil`, or `$PAI_DISTIL_HOME`, or `--home`."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PAI_DISTIL_HOME"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".pai-distil").expanduser()


def set_home(path: str | Path) -> None:
    os.environ[ENV_HOME] = str(Path(path).expanduser().resolve())


def runs_db() -> Path:
    return home() / "runs.sqlite"


def checked_files() -> Path:
    """Files whose checksum matched their manifest, by stat (artifacts.Checked)."""
    return home() / "checked-files.json"


def run_dir(run_id: str) -> Path:
    """Per-run files: the job spec, the config, the log."""
    return home() / "runs" / run_id


def work_dir(stage: str, key: str) -> Path:
    """Per-(stage, config, inputs) files: output and checkpoints, shared by reruns so they resume."""
    return home() / "work" / f"{stage}-{key[:16]}"
