"""The teacher-logits stage: a teacher's top-k distributions at every assistant token of SFT rows."""

from __future__ import annotations

from pydantic import Field

from .base import Strict
from .distill import LogitsTeacher
from .training import Student


class TeacherLogitsConfig(Strict):
    """Score SFT rows with a teacher: its top-k token ids and log-probabilities at every assistant token."""

    teacher: LogitsTeacher = Field(default_factory=LogitsTeacher,
                                   description="the teacher: model (run in the job), endpoint (served), or neither "
                                               "for the stage's `teacher` input")
    student: Student = Field(default_factory=Student,
                             description="the student these distributions are for: its tokenizer must be the teacher's")
    top_k: int = Field(20, ge=1, le=1024, description="teacher tokens kept per position (most likely first)")
    max_length: int | None = Field(None, ge=16, le=1_048_576,
                                   description="tokens per row, as the training stage will cut them; default 1024 "
                                               "for presets, 8192 for checkpoints")
    max_truncated: float = Field(0.05, ge=0, le=1, description="fail when more than this share of rows is cut")
    require_correct: bool = Field(True, description="score only CoTs whose answer the verifier accepted")
    max_samples: int | None = Field(None, ge=1, description="score at most this many rows")
    shard_rows: int = Field(256, ge=1, le=1_000_000, description="rows per shard file; a killed job loses at most "
                                                               "the shard it was writing")

    def required_inputs(self) -> tuple[str, ...]:
        return ("teacher",) if self.teacher.from_input else ()
