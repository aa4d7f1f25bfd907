"""What `deploy` serves: a checkpoint folder, a run id whose output is one, or an OSS URI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pai_distil.core.artifacts import REWARD_HEAD, artifact_name
from pai_distil.core.errors import UserError
from pai_distil.core.model_refs import check_checkpoint
from pai_distil.core.stages import TRAINING_STAGES

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # EAS service names: lower case, digits, underscores


@dataclass(frozen=True)
class Checkpoint:
    location: str  # a local folder, or oss://bucket/prefix/
    name: str  # a default service / served-model name derived from it
    run_id: str | None = None
    reward: bool | None = None  # a reward model (REWARD_HEAD beside the weights); None: not known (on OSS)

    @property
    def on_oss(self) -> bool:
        return self.location.startswith("oss://")

    @property
    def dtype(self) -> str | None:
        """The dtype its config.json declares (`dtype`, or the older `torch_dtype`); None on OSS or unstated."""
        import json

        config = Path(self.location) / "config.json"
        if self.on_oss or not config.is_file():
            return None
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError:
            return None
        return data.get("dtype") or data.get("torch_dtype")


def check_local(path: Path) -> Path:
    """A Hugging Face checkpoint folder, or a UserError naming what is missing."""
    if not path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is not a folder; give a checkpoint folder (config.json, weights, "
                        "tokenizer) or the id of a training run")
    try:
        check_checkpoint(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    return path.resolve()


def default_name(text: str) -> str:
    """A service name from a folder or run name: lower case, `_` for anything else, starting with a letter."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "model"
    if not name[0].isalpha():
        name = "m_" + name
    return name[:63]


def resolve(ref: str) -> Checkpoint:
    """A checkpoint from a folder, an `oss://` URI or a run id (prefix) of a finished training run."""
    if ref.startswith("oss://"):
        if not re.match(r"^oss://[a-z0-9][a-z0-9-]{1,61}[a-z0-9](/.*)?$", ref):
            raise UserError(f"{ref!r} is not an OSS URI; write oss://BUCKET/PATH/ to the checkpoint folder")
        prefix = ref.rstrip("/") + "/"
        parts = prefix.rstrip("/").rsplit("/", 2)  # a run's output folder is named `output`: name it by its run's
        return Checkpoint(prefix, default_name(parts[-2] if parts[-1] == "output" and len(parts) == 3 else parts[-1]))
    path = Path(ref).expanduser()
    if path.exists():
        path = check_local(path)
        return Checkpoint(str(path), default_name(artifact_name(path)), reward=(path / REWARD_HEAD).is_file())
    from pai_distil.run.registry import Registry

    try:
        record = Registry().get(ref)
    except UserError:
        raise UserError(f"{ref!r} is neither a checkpoint folder, an oss:// URI nor a run id; "
                        "`pai-distil runs list` shows run ids") from None
    if record.stage not in TRAINING_STAGES:
        raise UserError(f"run {record.id} is a {record.stage} run; deploy the output of a training run "
                        f"({', '.join(TRAINING_STAGES)})")
    if record.state not in ("succeeded", "cached") or not record.output:
        raise UserError(f"run {record.id} is {record.state}; deploy it once it has succeeded")
    reward = record.stage == "reward-model"
    if record.output.startswith("oss://"):
        return Checkpoint(record.output.rstrip("/") + "/", default_name(record.id), record.id, reward)
    return Checkpoint(str(check_local(Path(record.output))), default_name(record.id), record.id, reward)
