"""The reasoning verbosity a problem's cognitive difficulty calls for: the line ThoughtX keeps CoTs near
and the reward model's judgment scores length fit against."""

from __future__ import annotations

from pydantic import Field

from .base import Strict


class RVTarget(Strict):
    """target RV = intercept + slope * CD, clamped to 0-9."""

    intercept: float = Field(-1.0, description="target RV = intercept + slope * CD (clamped to 0-9)")
    slope: float = Field(0.8, description="target RV = intercept + slope * CD")

    def target(self, cd: int) -> float:
        return min(9.0, max(0.0, self.intercept + self.slope * cd))
