"""The slow-thinking stage: SFT (or KD) of the student on verified long chains of thought."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .base import Strict
from .distill import Distill
from .training import Student, Training


class SlowThinkingConfig(Strict):

    """Supervised distillation of verified long chains of thought into the student."""

    student: Student = Field(default_factory=Student)
    train: Training = Field(default_factory=Training)
    require_correct: bool = Field(True, description="train only on CoTs whose answer the verifier accepted")
    verbosity: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(
        None, description="use only CoTs generated at these verbosity levels (requested_rv); omit to use all")
    max_samples: int | None = Field(None, ge=1, description="use at most this many training rows")
    distill: Distill | None = Field(None, description="learn from the teacher's token distributions (white-box KD "
                                                    "or on-policy distillation); omit for plain SFT")

    @model_validator(mode="after")
    def _distill_scores_final_turns(self) -> SlowThinkingConfig:
        if self.distill and self.train.all_turns:
            raise ValueError("distill learns the teacher's distributions on each row's final assistant turn; "
                             "drop train.all_turns or distill")
        return self

    def required_inputs(self) -> tuple[str, ...]:
        return self.distill.required_inputs() if self.distill else ()
