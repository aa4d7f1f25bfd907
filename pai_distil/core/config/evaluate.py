"""The evaluate stage: held-out accuracy and output tokens per model, level and source."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .. import model_refs
from .base import Strict
from .data import CodeSandbox, ProblemData, SyntheticProblems
from .endpoint import Endpoint


class EvalModel(Strict):
    name: str = Field(description="label in the report")
    model: str | None = Field(None, description="preset, checkpoint path, hub id or ms://ORG/NAME (ModelScope)")
    input: str | None = Field(None, description="name of a stage input holding the checkpoint (in pipelines)")
    endpoint: Endpoint | None = Field(None, description="evaluate a served model instead of a checkpoint")
    enable_thinking: bool | None = Field(
        None, description="passed to the chat template (endpoints: chat_template_kwargs); null: the template's default")
    max_new_tokens: int | None = Field(None, ge=1, description="this model's output budget; default: the evaluate-wide one")
    seed: int = 0

    _model = field_validator("model")(classmethod(lambda cls, v: v if v is None else model_refs.check(v)))

    @model_validator(mode="after")
    def _one_source(self) -> EvalModel:
        if sum(x is not None for x in (self.model, self.input, self.endpoint)) != 1:
            raise ValueError(f"model {self.name!r}: give exactly one of `model`, `input` or `endpoint`")
        return self


class EvaluateConfig(Strict):
    """Decoding of held-out problems: pass@1, output tokens, per model, difficulty level and source."""

    models: list[EvalModel] = Field(min_length=1)
    problems: SyntheticProblems | None = Field(
        None, description="held-out synthetic problems; omit to read the `problems` input")
    data: ProblemData = Field(default_factory=ProblemData, description="how to read the `problems` input")
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(64, ge=1)
    samples: int = Field(1, ge=1, le=1024, description="samples per problem; accuracy is pass@1 averaged over them")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, description="sampling seed")
    user_prompt: str | None = Field(
        None, description="override the user message; `{problem}` is replaced (default: the problem, with the "
                          "answer-format instruction of its verifier)")
    sandbox: CodeSandbox = Field(default_factory=CodeSandbox, description="limits when verifying code answers")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[EvalModel]) -> list[EvalModel]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _sampling(self) -> EvaluateConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples = {self.samples} with temperature 0 gives {self.samples} identical greedy "
                             "answers; set temperature > 0 (e.g. 0.6) or samples: 1")
        return self
