"""The job contract, as seen from inside a job: environment variables in, artifacts out.

Identical on every backend (see docs/architecture.md): PAI_DISTIL_STAGE, PAI_DISTIL_RUN_ID,
PAI_DISTIL_CONFIG, PAI_DISTIL_INPUT_<NAME>, PAI_DISTIL_OUTPUT, PAI_DISTIL_CHECKPOINT_DIR,
PAI_DISTIL_GPUS (GPUs each node was given, where any were: the job fails if torch cannot use them), and
the PAI-DLC PyTorchJob variables MASTER_ADDR, MASTER_PORT, WORLD_SIZE (nodes), RANK (node
index), NPROC_PER_NODE.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

INPUT_PREFIX = "PAI_DISTIL_INPUT_"
ERROR_PREFIX = "pai-distil job error:"


class JobError(Exception):
    """A problem with the job's inputs or services, reported as one line (no traceback)."""


def input_env_name(name: str) -> str:
    return INPUT_PREFIX + name.upper().replace("-", "_")


@dataclass
class JobContext:
    stage: str
    run_id: str
    config: dict
    inputs: dict[str, Path]
    output: Path
    checkpoint_dir: Path

    @classmethod
    def from_env(cls) -> JobContext:
        env = os.environ
        missing = [k for k in ("PAI_DISTIL_STAGE", "PAI_DISTIL_CONFIG", "PAI_DISTIL_OUTPUT") if not env.get(k)]
        if missing:
            raise JobError(f"job environment lacks {', '.join(missing)}; start jobs with `pai-distil submit`")
        inputs = {k[len(INPUT_PREFIX):].lower(): Path(v) for k, v in env.items() if k.startswith(INPUT_PREFIX)}
        output = Path(env["PAI_DISTIL_OUTPUT"])
        return cls(
            stage=env["PAI_DISTIL_STAGE"],
            run_id=env.get("PAI_DISTIL_RUN_ID", "local"),
            config=json.loads(Path(env["PAI_DISTIL_CONFIG"]).read_text()),
            inputs=inputs,
            output=output,
            checkpoint_dir=Path(env.get("PAI_DISTIL_CHECKPOINT_DIR") or output / "checkpoints"),
        )

    def parsed_config(self, model):
        """The stage's config validated as `model`; a bad one fails the job with the field named."""
        from pydantic import ValidationError

        from pai_distil.core.config import explain

        try:
            return model.model_validate(self.config)
        except ValidationError as e:
            raise JobError(explain(e, f"{self.stage} config", model, most=1)) from None  # the job fails in one line

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise JobError(f"stage {self.stage} needs input '{name}'; pass --input {name}=PATH")
        path = self.inputs[name]
        if not path.exists():
            raise JobError(f"input '{name}' path {path} does not exist")
        return path

    @property
    def metrics_path(self) -> Path:
        return self.output / "metrics.jsonl"

    @property
    def is_main_process(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def log(message: str) -> None:
    print(message, flush=True)


def fail(message: str) -> None:
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr, flush=True)
