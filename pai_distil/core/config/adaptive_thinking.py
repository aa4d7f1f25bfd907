"""The adaptive-thinking stage: ThoughtX (RV fitted to CD) and ThoughtY (the thinking switch)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .base import Strict
from .distill import Distill
from .rv_target import RVTarget
from .training import Student, Training


class RVPolicy(RVTarget):
    """Which CoTs ThoughtX keeps: reasoning verbosity (RV) matched to cognitive difficulty (CD)."""

    tolerance: float = Field(1.5, ge=0, description="keep CoTs whose RV is within this distance of the target")
    per_problem: int = Field(1, ge=1, description="CoTs kept per problem, closest to the target first")
    min_per_bin: int = Field(1, ge=0, description="fail when a CD level present in the data keeps fewer rows")
    max_per_bin: int | None = Field(None, ge=1, description="keep at most this many rows per CD level")
    require_correct: bool = Field(True, description="keep only CoTs judged correct")


class AdaptiveThinkingConfig(Strict):
    """ThoughtX (variant x: RV fitted to CD, curriculum) or ThoughtY (variant y: thinking switch)."""

    variant: Literal["x", "y"] = Field(description="x: RV matched to CD; y: thinking / non-thinking switch")
    student: Student = Field(default_factory=Student)
    train: Training = Field(default_factory=Training)
    policy: RVPolicy = Field(default_factory=RVPolicy, description="variant x: which CoTs to keep")
    curriculum: Literal["easy-to-hard", "mixed"] = Field(
        "mixed", description="variant x: order of training rows (easy-to-hard by CD, or shuffled)")
    think_verbosity: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(
        None, description="variant y: verbosity levels (requested_rv) used for thinking samples; omit for all")
    no_think_ratio: float = Field(0.5, ge=0, le=1,
                                  description="variant y: fraction of problems that also get a non-thinking sample")
    soft_switch_ratio: float = Field(
        0.5, ge=0, le=1, description="variant y: fraction of samples that carry /think or /no_think in the user "
                                     "turn instead of the chat template's enable_thinking flag")
    no_template_switch: Literal["refuse", "soft_switch"] = Field(
        "refuse", description="variant y, when the student's chat template ignores enable_thinking (Qwen2.5's): "
                              "refuse to train, or train every non-thinking row with /no_think in the user turn")
    seed: int = 0
    distill: Distill | None = Field(None, description="learn from the teacher's token distributions (white-box KD "
                                                    "or on-policy distillation); omit for plain SFT")

    @field_validator("distill")
    @classmethod
    def _stored_logits_cover_the_rows(cls, distill: Distill | None, info) -> Distill | None:
        if distill and distill.mode == "logits" and info.data.get("variant") == "y":
            raise ValueError("variant y trains direct-answer rows the teacher-logits stage never scores; use "
                             "mode on-policy (the teacher scores each batch), or variant x")
        return distill

    def required_inputs(self) -> tuple[str, ...]:
        return self.distill.required_inputs() if self.distill else ()
