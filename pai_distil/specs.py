"""Validated specifications: one config model per stage, the pipeline file, the job spec.

Everything a user writes is checked here, before anything is started, built or uploaded.
Models forbid unknown fields, so a typo is reported instead of silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .presets import PRESETS, is_preset, preset_name
from .synthetic.world import LEVEL_STEPS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- shared pieces ------------------------------------------------------------------------------


class SyntheticProblems(Strict):
    """Problems drawn from the synthetic reasoning world."""

    n: int = Field(300, ge=1, le=1_000_000, description="number of problems")
    seed: int = Field(0, description="seed of the generator; different seeds give disjoint-looking sets")
    levels: list[int] = Field(default_factory=lambda: sorted(LEVEL_STEPS), description="difficulty levels to draw from")

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, v: list[int]) -> list[int]:
        bad = [lv for lv in v if lv not in LEVEL_STEPS]
        if bad or not v:
            raise ValueError(f"levels must be a non-empty subset of {sorted(LEVEL_STEPS)}, got {v}")
        return v


class Teacher(Strict):
    """An OpenAI-compatible chat endpoint (vLLM on PAI-EAS, DashScope, the synthetic teacher)."""

    base_url: str = Field("http://127.0.0.1:8400/v1", description="base URL ending in /v1")
    model: str = Field("oracle", description="model name the endpoint serves")
    api_key_env: str | None = Field("PAI_DISTIL_TEACHER_API_KEY",
                                    description="name of the environment variable holding the API key (never the key itself)")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(4, ge=0, le=20, description="retries on 429, 5xx and timeouts (exponential backoff)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    max_tokens: int = Field(4096, ge=1, description="completion budget per request")
    temperature: float = Field(0.0, ge=0.0, le=2.0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


class Student(Strict):
    """The model to train: a tiny preset (`preset:tiny`), a local checkpoint path or a hub id."""

    model: str = Field("preset:tiny", description="preset:<name>, a local checkpoint directory, or a hub id")
    seed: int = Field(0, description="initialisation seed for presets")

    @field_validator("model")
    @classmethod
    def _preset_known(cls, v: str) -> str:
        if is_preset(v) and preset_name(v) not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {', '.join('preset:' + p for p in PRESETS)}")
        return v


class Training(Strict):
    max_steps: int = Field(600, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(1024, ge=16, description="tokens per training sequence; longer ones are cut")
    checkpoint_every: int = Field(100, ge=1, description="save a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0


# -- stage configs ------------------------------------------------------------------------------


class GenerateConfig(Strict):
    """Ask a teacher for chains of thought and verify its answers."""

    teacher: Teacher = Field(default_factory=Teacher)
    problems: SyntheticProblems | None = Field(
        None, description="draw problems from the synthetic world; omit to read the `problems` input (JSONL)")
    verbosity: list[Annotated[int, Field(ge=0, le=9)]] = Field(
        default_factory=lambda: [4], description="reasoning verbosity levels (RV 0-9) to ask for; one CoT per level per problem")
    system_prompt: str | None = Field(None, description="override the system prompt; `{verbosity}` is replaced")
    max_bad_fraction: float = Field(0.5, ge=0, le=1, description="fail when more than this fraction of answers cannot be parsed")


class SlowThinkingConfig(Strict):
    """Supervised distillation of verified long chains of thought into the student."""

    student: Student = Field(default_factory=Student)
    train: Training = Field(default_factory=Training)
    require_correct: bool = Field(True, description="train only on CoTs whose answer the verifier accepted")
    max_samples: int | None = Field(None, ge=1, description="use at most this many training rows")


class EvalModel(Strict):
    name: str = Field(description="label in the report")
    model: str | None = Field(None, description="preset, checkpoint path or hub id")
    input: str | None = Field(None, description="name of a stage input holding the checkpoint (in pipelines)")
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> EvalModel:
        if (self.model is None) == (self.input is None):
            raise ValueError(f"model {self.name!r}: give exactly one of `model` or `input`")
        return self


class EvaluateConfig(Strict):
    """Greedy decoding of held-out problems; accuracy and output tokens per model and level."""

    models: list[EvalModel] = Field(min_length=1)
    problems: SyntheticProblems | None = Field(
        None, description="held-out synthetic problems; omit to read the `problems` input (JSONL)")
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(64, ge=1)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[EvalModel]) -> list[EvalModel]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return v


# -- job spec -----------------------------------------------------------------------------------


class Resources(Strict):
    cpu: float | None = None
    memory_gb: float | None = None
    gpu: int = 0
    instance_type: str | None = None


class JobSpec(Strict):
    """The backend-neutral description of one job; each backend translates it."""

    run_id: str
    stage: str
    image: str | None = None
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> path or URI, read-only")
    output: str
    checkpoint_dir: str
    nodes: int = Field(1, ge=1)
    procs_per_node: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)


# -- pipeline -----------------------------------------------------------------------------------


class PipelineStage(Strict):
    stage: str = Field(description="stage name, e.g. generate, slow-thinking, evaluate")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="input name -> id of an earlier stage in this pipeline, or a path")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config (see `pai-distil schema STAGE`)")
    nodes: int = Field(1, ge=1)
    procs_per_node: int = Field(1, ge=1)


class Pipeline(Strict):
    name: str
    backend: Literal["process", "local", "pai"] = "process"
    stages: dict[str, PipelineStage] = Field(min_length=1, description="stage id -> stage; run in dependency order")


# -- loading ------------------------------------------------------------------------------------


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON file as a mapping, with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {str(p)!r} does not exist; check the path")
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix in (".yaml", ".yml") else json.loads(p.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} file {str(p)!r} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{what} file {str(p)!r} must hold a mapping of fields, got {type(data).__name__}")
    return data


def explain(err: ValidationError, where: str) -> str:
    """The first validation problem as one line: field, bad value, fix."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"{where}: field '{loc}' is required; add it"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown field '{loc}'; remove it or check its spelling (`pai-distil schema` lists the fields)"
    value = e.get("input")
    shown = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    extra = len(err.errors()) - 1
    more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
    return f"{where}: field '{loc}' = {shown} is invalid: {msg}{more}"


def validate(model: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(explain(err, where)) from None
