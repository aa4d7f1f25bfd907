"""The stage registry: every stage of the recipe, its config model, its inputs and its job module.

The one list both sides read: the CLI (`pai-distil submit --help`, `stages`, validation) and the job
entrypoint (`python -m pai_distil_jobs`, which runs `entry`). Config models are named, not imported,
so `--help` lists the stages without building a pydantic model.

Adding a stage: its config model in `pai_distil/core/config/<stage>.py`, one `Stage` entry below,
and its job module `jobs/stages/<stage>.py` with `run(ctx)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import UserError
from .suggest import did_you_mean


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_name: str  # class in pai_distil.core.config
    inputs: tuple[str, ...] = ()  # required input names
    optional_inputs: tuple[str, ...] = ()
    distributed: bool = False  # launched under torchrun
    open_inputs: bool = False  # accepts extra inputs named by its config (evaluate)
    trains: bool = False  # its output is a checkpoint (deployable)

    @property
    def config(self):
        """The stage's pydantic config model."""
        return getattr(importlib.import_module("pai_distil.core.config"), self.config_name)

    @property
    def entry(self) -> str:
        """The job module that runs the stage: `run(ctx)` in `pai_distil_jobs.stages.<name>`."""
        return "pai_distil_jobs.stages." + self.name.replace("-", "_")


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("generate", "teacher writes chains of thought; answers verified", "GenerateConfig",
          optional_inputs=("problems",)),
    Stage("score", "judge rates correctness, reasoning verbosity (RV) and cognitive difficulty (CD)", "ScoreConfig",
          inputs=("cots",)),
    Stage("teacher-logits", "teacher's top-k token ids and log-probabilities at every assistant token of SFT rows",
          "TeacherLogitsConfig", inputs=("cots",), optional_inputs=("teacher",)),
    Stage("slow-thinking", "SFT of the student on verified long chains of thought (or KD with `distill`)",
          "SlowThinkingConfig", inputs=("cots",), optional_inputs=("teacher_logits", "teacher", "student"),
          distributed=True, trains=True),
    Stage("adaptive-thinking", "SFT with RV matched to CD (variant x) or a thinking switch (variant y)",
          "AdaptiveThinkingConfig", inputs=("cots",), optional_inputs=("teacher_logits", "teacher"), distributed=True,
          trains=True),
    Stage("reward-model", "a reward model distilled from the teacher's judgments", "RewardModelConfig",
          inputs=("cots",), optional_inputs=("student", "base"), distributed=True, trains=True),
    Stage("grpo", "GRPO of the student with the distilled reward model and verifiable correctness", "GRPOConfig",
          inputs=("student",), optional_inputs=("reward_model", "problems"), distributed=True,
          trains=True),
    Stage("dpo", "DPO of the student on preference pairs (the reward-model stage's or a file); the reference is "
          "the starting checkpoint", "DPOConfig", inputs=("pairs",), optional_inputs=("student",), distributed=True,
          trains=True),
    Stage("evaluate", "held-out accuracy and output tokens per model and difficulty level", "EvaluateConfig",
          optional_inputs=("problems",), open_inputs=True),
]}

TRAINING_STAGES = tuple(n for n, s in STAGES.items() if s.trains)
# Inputs that hold a Hugging Face checkpoint (the model to continue, the logits teacher, the reward
# model), whichever stage takes them: checked as checkpoints when a run is submitted.
CHECKPOINT_INPUTS = frozenset({"student", "base", "teacher", "reward_model"})


def get_stage(name: str) -> Stage:
    stage = STAGES.get(name)
    if stage is None:
        raise UserError(f"unknown stage {name!r}{did_you_mean(name, STAGES)} (stages: {', '.join(STAGES)})")
    return stage
