"""The score stage: a judge rates every chain of thought."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..judging import DIMENSIONS
from .base import Strict
from .endpoint import Teacher


class ScoreConfig(Strict):
    """A judge rates every CoT sample: correctness, reasoning verbosity (RV), cognitive difficulty (CD)."""

    judge: Teacher = Field(default_factory=lambda: Teacher(model="judge", max_tokens=256),
                           description="an OpenAI-compatible judge (the synthetic server serves `judge`)")
    dimensions: list[Literal[DIMENSIONS]] = Field(
        default_factory=lambda: list(DIMENSIONS), min_length=1, description="what the judge rates")
    max_unscored_fraction: float = Field(0.5, ge=0, le=1,
                                         description="fail when more than this fraction of samples stay unscored")
