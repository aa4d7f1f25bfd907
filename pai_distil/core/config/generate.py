"""The generate stage: a teacher writes chains of thought, or rewrites existing ones."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Strict
from .data import CodeSandbox, ProblemData, SyntheticProblems
from .endpoint import Teacher


class Refine(Strict):
    """Rewrite existing chains of thought with the teacher: long-to-short or short-to-long."""

    direction: Literal["shorter", "longer"] = Field(description="shorter: condense the chain; longer: expand it")
    prompt: str | None = Field(
        None, description="override the rewrite instruction; {direction} and {verbosity} are replaced")


class GenerateConfig(Strict):
    """Ask a teacher for chains of thought and verify its answers."""

    teacher: Teacher = Field(default_factory=Teacher)
    problems: SyntheticProblems | None = Field(
        None, description="draw problems from the synthetic world; omit to read the `problems` input (JSONL)")
    verbosity: list[Annotated[int, Field(ge=0, le=9)]] = Field(
        default_factory=lambda: [4], description="reasoning verbosity levels (RV 0-9) to ask for; one CoT per level per problem")
    system_prompt: str | None = Field(None, description="override the system prompt; `{verbosity}` is replaced")
    user_prompt: str | None = Field(
        None, description="override the user message; `{problem}` is replaced (default: the problem, with the "
                          "answer-format instruction of its verifier)")
    data: ProblemData = Field(default_factory=ProblemData, description="how to read the `problems` input")
    refine: Refine | None = Field(
        None, description="rewrite the CoTs of the `problems` input (CoT rows) shorter or longer at each "
                          "`verbosity`, instead of solving problems")
    sandbox: CodeSandbox = Field(default_factory=CodeSandbox, description="limits when verifying code answers")
    max_bad_fraction: float = Field(0.5, ge=0, le=1, description="fail when more than this fraction of answers cannot be parsed")
