"""Where problems come from: the synthetic world, or data files in the published shapes; the code sandbox's
limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..world import LEVEL_STEPS
from .base import Strict


class SyntheticProblems(Strict):
    """Problems drawn from the synthetic reasoning world."""

    n: int = Field(300, ge=1, le=1_000_000, description="number of problems")
    seed: int = Field(0, description="seed of the generator; different seeds give disjoint-looking sets")
    levels: list[int] = Field(default_factory=lambda: sorted(LEVEL_STEPS),
                              description="difficulty levels, drawn in turn; repeat a level to weight it "
                                          "([2, 2, 2, 1]: three level-2 problems to one level-1)")

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, v: list[int]) -> list[int]:
        bad = [lv for lv in v if lv not in LEVEL_STEPS]
        if bad or not v:
            raise ValueError(f"levels must be a non-empty subset of {sorted(LEVEL_STEPS)}, got {v}")
        return v


VERIFIER_NAMES = Literal["synthetic", "exact", "math", "multiple_choice", "code"]


DATA_FORMATS = Literal["auto", "problems", "math", "multiple_choice", "gpqa", "code", "messages", "cots"]


class FieldNames(Strict):
    """Column names of a file, where they differ from the names its format usually has."""

    id: str | None = None
    problem: str | None = None
    answer: str | None = None
    choices: str | None = Field(None, description="list of choice texts (multiple choice)")
    tests: str | None = Field(None, description="test cases (code): a list or a JSON string")
    level: str | None = Field(None, description="difficulty level, for the per-level breakdown")
    source: str | None = Field(None, description="benchmark / origin, for the per-source breakdown")
    domain: str | None = None
    thought: str | None = Field(None, description="CoT rows: the chain of thought")
    solution: str | None = Field(None, description="CoT rows: the answer after the chain")
    rv: str | None = Field(None, description="CoT rows: reasoning verbosity annotation")
    cd: str | None = Field(None, description="CoT rows: cognitive difficulty annotation")


class DataFile(Strict):
    """How to read a data file (JSONL, JSON, Parquet or CSV) in one of the published shapes."""

    format: DATA_FORMATS = Field(
        "auto", description="problems (this project's rows), math (MATH-500, AIME, GSM8K), gpqa (GPQA CSV), "
                            "multiple_choice (question + choices), code (LiveCodeBench), messages (chat rows), "
                            "cots (OmniThought-style CoT rows, generate's cots.jsonl); auto: told by the fields")
    fields: FieldNames = Field(default_factory=FieldNames, description="column names, where not the usual ones")
    verifier: VERIFIER_NAMES | None = Field(
        None, description="verifier for every row; omit to use each row's `domain` or the format's")
    source: str | None = Field(None, description="source label of every row; default: the row's `source`, else the file name")
    limit: int | None = Field(None, ge=1, description="read at most this many rows of the file")
    choices_seed: int = Field(0, description="GPQA: seed of the shuffle that places the correct answer among the letters")


class ProblemData(DataFile):
    """How to read the `problems` input: a file, or a directory of files (one source per file)."""

    files: dict[str, DataFile] = Field(
        default_factory=dict, description="per-file settings by file name, for a directory input")


class CodeSandbox(Strict):
    """Limits of each run of a code answer against one test case."""

    timeout_s: float = Field(6.0, gt=0, le=600, description="wall-clock seconds per test case")
    memory_mb: int = Field(1024, ge=64, le=65536, description="address space of the program")
    isolation: Literal["auto", "bwrap", "docker", "none"] = Field(
        "auto", description="what the program runs behind: bwrap (bubblewrap namespaces), docker (a container "
                            "without network), auto (bwrap, else docker), none (no isolation: needs allow_unsandboxed)")
    allow_unsandboxed: bool = Field(
        False, description="run model-written code without isolation when `isolation` is none, or is auto and "
                           "neither bwrap nor Docker runs here (trusted code only)")
    image: str | None = Field(None, min_length=1,
                              description="Docker image with python3 for `isolation: docker`; null: the job image's "
                                          "Debian base (`pai-distil images bootstrap-base`)")
