"""The result of checking one response: whether it is right, what was read from it, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Verdict:
    correct: bool
    extracted: str | None = None  # the final answer (or program) read from the response; None: none found
    details: dict = field(default_factory=dict)  # verifier-specific: per-case results for code

    def __bool__(self) -> bool:
        return self.correct
