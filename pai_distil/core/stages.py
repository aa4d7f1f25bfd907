"""The stage registry: every stage of the recipe, its config model, its inputs, and whether it exists yet."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from pai_distil.core.errors import UserError
from pai_distil.core.config import AdaptiveThinkingConfig, DPOConfig, EvaluateConfig, GenerateConfig, GRPOConfig, RewardModelConfig, ScoreConfig, SlowThinkingConfig, TeacherLogitsConfig


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config: type[BaseModel] | None = None  # None: not available yet
    inputs: tuple[str, ...] = ()  # required input names
    optional_inputs: tuple[str, ...] = ()
    distributed: bool = False  # launched under torchrun
    open_inputs: bool = field(default=False)  # accepts extra inputs named by its config (evaluate)

    @property
    def available(self) -> bool:
        return self.config is not None


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("generate", "teacher writes chains of thought; answers verified", GenerateConfig,
          optional_inputs=("problems",)),
    Stage("score", "judge rates correctness, reasoning verbosity (RV) and cognitive difficulty (CD)", ScoreConfig,
          inputs=("cots",)),
    Stage("teacher-logits", "teacher's top-k token ids and log-probabilities at every assistant token of SFT rows",
          TeacherLogitsConfig, inputs=("cots",), optional_inputs=("teacher",)),
    Stage("slow-thinking", "SFT of the student on verified long chains of thought (or KD with `distill`)",
          SlowThinkingConfig, inputs=("cots",), optional_inputs=("teacher_logits", "teacher", "student"),
          distributed=True),
    Stage("adaptive-thinking", "SFT with RV matched to CD (variant x) or a thinking switch (variant y)",
          AdaptiveThinkingConfig, inputs=("cots",), optional_inputs=("teacher_logits", "teacher"), distributed=True),
    Stage("reward-model", "a reward model distilled from the teacher's judgments", RewardModelConfig,
          inputs=("cots",), optional_inputs=("student", "base")),
    Stage("grpo", "GRPO of the student with the distilled reward model and verifiable correctness", GRPOConfig,
          inputs=("student",), optional_inputs=("reward_model", "problems")),
    Stage("dpo", "DPO of the student on preference pairs (the reward-model stage's or a file); the reference is "
          "the starting checkpoint", DPOConfig, inputs=("pairs",), optional_inputs=("student",), distributed=True),
    Stage("evaluate", "held-out accuracy and output tokens per model and difficulty level", EvaluateConfig,
          optional_inputs=("problems",), open_inputs=True),
]}


def get_stage(name: str, *, require_available: bool = True) -> Stage:
    stage = STAGES.get(name)
    if stage is None:
        raise UserError(f"unknown stage {name!r}; choose one of: {', '.join(STAGES)}")
    if require_available and not stage.available:
        raise UserError(f"stage {name!r} is not available yet in this version of pai-distil; "
                        f"available stages: {', '.join(n for n, s in STAGES.items() if s.available)}")
    return stage
