"""Validated specifications: one config model per stage, the pipeline file, the job spec.

Everything a user writes is checked here, before anything is started, built or uploaded.
Models forbid unknown fields, so a typo is reported instead of silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import model_refs
from .errors import UserError
from .synthetic.world import LEVEL_STEPS


MAX_INT = 2**53  # above any count or seed a config holds; `max_steps: 1e29` is a typo, not a plan


class Strict(BaseModel):
    """Unknown fields, non-finite numbers (`.inf`, `.nan`) and absurd integers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _sane_integer(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            raise ValueError(f"{v:.3g} is beyond any count this tool uses (at most 2**53); check the number")
        return v


def http_url(v: str) -> str:
    """An endpoint's base URL, without its trailing slash."""
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
    return v.rstrip("/")


# -- shared pieces ------------------------------------------------------------------------------


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

    _url = field_validator("base_url")(classmethod(lambda cls, v: http_url(v)))


class Student(Strict):
    """The model to train: a tiny preset (`preset:tiny`), a local checkpoint path or a hub id."""

    model: str = Field("preset:tiny", description="preset:<name>, a local checkpoint directory, or a hub id")
    seed: int = Field(0, description="initialisation seed for presets")

    _model = field_validator("model")(classmethod(lambda cls, v: model_refs.check(v)))


class LogitsTeacher(Strict):
    """The teacher whose token distributions a student learns from: a checkpoint run inside the job
    (batched, on the GPU when there is one), or a served model that returns prompt logprobs (vLLM's
    completions API with `echo` and `logprobs`). It must share the student's tokenizer."""

    model: str | None = Field(None, description="preset:<name>, a local checkpoint directory or a hub id, run in the job")
    endpoint: Teacher | None = Field(
        None, description="an OpenAI-compatible completions endpoint returning prompt logprobs (vLLM, or "
                          "`pai-distil teacher serve --synthetic --logits-model DIR`)")
    seed: int = Field(0, description="initialisation seed when `model` is a preset")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per teacher forward pass (local model)")

    _model = field_validator("model")(classmethod(lambda cls, v: v if v is None else model_refs.check(v)))

    @model_validator(mode="after")
    def _one_source(self) -> LogitsTeacher:
        if self.model is not None and self.endpoint is not None:
            raise ValueError("give one of teacher.model (a checkpoint run in the job) or teacher.endpoint "
                             "(a served model), not both")
        return self

    @property
    def from_input(self) -> bool:
        """Neither model nor endpoint: the checkpoint is the stage's `teacher` input (an earlier stage's output)."""
        return self.model is None and self.endpoint is None


class Distill(Strict):
    """Learning from the teacher's token distributions instead of (or beside) its text.

    logits: white-box KD on the teacher's stored top-k (the `teacher_logits` input, written by the
    teacher-logits stage): loss = alpha * CE + (1 - alpha) * divergence over the top-k support.
    on-policy: GKD; a `lmbda` share of batches is sampled by the student and scored token by token by
    `teacher`, the rest are the rows scored by `teacher`; the student minimises the divergence."""

    mode: Literal["logits", "on-policy"] = Field(description="logits: stored teacher top-k; on-policy: GKD")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of cross-entropy on the rows' tokens; the divergence "
                                                      "gets 1 - alpha (on-policy batches: the divergence alone)")
    temperature: float = Field(1.0, gt=0, le=10, description="softens both distributions; the loss is scaled by its square")
    divergence: Literal["forward", "reverse", "jsd"] | None = Field(
        None, description="forward KL(teacher || student), reverse KL(student || teacher) or generalised JSD "
                          "(`beta`); default forward for logits, reverse for on-policy")
    beta: float = Field(0.5, gt=0, lt=1, description="jsd: weight of the teacher in the mixture (0.5: the JSD)")
    teacher: LogitsTeacher | None = Field(
        None, description="on-policy: the teacher that scores every token (model or endpoint; {} or omitted: the "
                          "stage's `teacher` input)")
    top_k: int = Field(20, ge=1, le=1024, description="on-policy: teacher tokens per position the divergence covers")
    lmbda: float = Field(1.0, ge=0, le=1, description="on-policy: share of batches the student samples itself")
    max_new_tokens: int = Field(256, ge=1, description="on-policy: tokens per student sample")
    sample_temperature: float = Field(1.0, gt=0, le=2.0, description="on-policy: sampling temperature of the student")
    rollout: Literal["hf", "vllm"] = Field(
        "hf", description="on-policy: how the student samples: hf (transformers generate) or vllm (vLLM colocated on "
                          "the training GPUs, weights synced each step; needs vllm in the job image)")
    vllm_gpu_memory: float = Field(0.3, gt=0, lt=1, description="rollout vllm: share of each GPU's memory vLLM "
                                                               "takes (weights and KV cache); training keeps the rest")

    @model_validator(mode="after")
    def _teacher_for_on_policy(self) -> Distill:
        if self.mode == "logits" and self.teacher is not None:
            raise ValueError("mode logits reads the teacher's stored top-k (input teacher_logits); drop "
                             "distill.teacher, or use mode on-policy")
        if self.mode == "logits" and self.rollout == "vllm":
            raise ValueError("rollout vllm samples the student on on-policy steps, and mode logits samples nothing; "
                             "drop distill.rollout, or use mode on-policy")
        return self

    @property
    def divergence_name(self) -> str:
        return self.divergence or ("forward" if self.mode == "logits" else "reverse")

    def required_inputs(self) -> tuple[str, ...]:
        if self.mode == "logits":
            return ("teacher_logits",)
        return ("teacher",) if self.teacher is None or self.teacher.from_input else ()


class DeepSpeed(Strict):
    """DeepSpeed ZeRO: optimizer state (stage 2) and parameters too (stage 3) partitioned across processes."""

    stage: Literal[2, 3] = Field(2, description="ZeRO stage: 2 partitions optimizer state and gradients, 3 also parameters")
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: train.bf16 (on where the GPU supports it)")
    offload_optimizer: bool = Field(False, description="keep optimizer state in CPU memory (ZeRO-Offload)")
    offload_param: bool = Field(False, description="stage 3 only: keep parameters in CPU memory")

    @model_validator(mode="after")
    def _offload_needs_stage3(self) -> DeepSpeed:
        if self.offload_param and self.stage != 3:
            raise ValueError("offload_param needs stage: 3 (stage 2 does not partition parameters)")
        return self


class StopAt(Strict):
    """Stop training once the student answers held-out problems this well (greedy pass@1)."""

    accuracy: float = Field(gt=0, le=1, description="held-out accuracy that ends training, e.g. 0.5")
    every: int = Field(50, ge=1, description="check every N steps")
    problems: SyntheticProblems = Field(
        default_factory=lambda: SyntheticProblems(n=200, seed=90_001, levels=[1]),
        description="the held-out problems (synthetic world); pick a seed the training data does not use")
    max_new_tokens: int = Field(128, ge=1)


class Lora(Strict):
    """PEFT LoRA: train low-rank adapters instead of every weight; the output is the merged checkpoint
    plus the adapter in `adapter/`."""

    r: int = Field(16, ge=1, le=4096, description="rank of the adapter matrices")
    alpha: int = Field(32, ge=1, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_proj, v_proj]), or all-linear")


class FSDP(Strict):
    """PyTorch FSDP through accelerate: parameters, gradients and optimizer state sharded across GPUs."""

    sharding: Literal["full_shard", "shard_grad_op"] = Field(
        "full_shard", description="full_shard: parameters too, like ZeRO-3; shard_grad_op: gradients and optimizer "
                                  "state, like ZeRO-2 (FSDP2)")
    offload: bool = Field(False, description="keep parameters and optimizer state in CPU memory")


# Defaults that depend on what is trained: a tiny preset learns fast at a high rate on short chains;
# a real checkpoint needs the field's small rate and long sequences. `None` in a config means "by kind".
PRESET_TRAINING = {"learning_rate": 3e-3, "max_length": 1024, "gradient_checkpointing": False}
CHECKPOINT_TRAINING = {"learning_rate": 1e-5, "max_length": 8192, "gradient_checkpointing": True}


class Training(Strict):
    """Supervised training on TRL and accelerate: one process per GPU (or CPU process), bf16 on GPUs."""

    max_steps: int = Field(600, ge=1, le=100_000_000, description="optimizer steps")
    schedule_steps: int | None = Field(
        None, ge=1, le=100_000_000,
        description="length of the learning-rate schedule (warmup, then cosine decay); default "
                    "max_steps. Above max_steps, training stops partway down the schedule: a "
                    "student that has not converged, with room left for reinforcement learning")
    batch_size: int = Field(32, ge=1, le=1_000_000,
                            description="sequences per optimizer step, over all processes and accumulation steps")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="micro-batches per optimizer step: each process takes "
                                      "batch_size / (processes x this) sequences at a time")
    learning_rate: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                        description="peak learning rate; default 3e-3 for presets, 1e-5 for checkpoints")
    warmup_steps: int = Field(30, ge=0, le=100_000_000)
    weight_decay: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)
    max_length: int | None = Field(None, ge=16, le=1_048_576,
                                   description="tokens per training sequence; longer ones are cut (see max_truncated); "
                                               "default 1024 for presets, 8192 for checkpoints")
    max_truncated: float = Field(0.05, ge=0, le=1, description="fail when more than this share of rows is cut at "
                                                               "max_length (warned above 1 %)")
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: on where the GPU supports it, off on CPU")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass (less memory, ~30 % slower); default off "
                          "for presets, on for checkpoints")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention kernel; auto: flash_attention_2 on GPUs when installed, else sdpa")
    packing: bool = Field(False, description="pack several rows into each max_length sequence (padding-free, "
                                             "attention kept within each row); faster on GPUs, slower on CPU")
    padding_free: bool = Field(False, description="concatenate a batch's rows without padding (implied by packing)")
    lora: Lora | None = Field(None, description="train LoRA adapters (PEFT) instead of every weight")
    checkpoint_every: int = Field(100, ge=1, description="save a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    max_bad_steps: int = Field(3, ge=1, description="fail the run after this many steps in a row with a non-finite loss")
    seed: int = 0
    deepspeed: DeepSpeed | None = Field(
        None, description="train with DeepSpeed ZeRO (a config generated from these fields); omit for plain DDP")
    fsdp: FSDP | None = Field(None, description="shard the model with PyTorch FSDP; omit for plain DDP")
    stop_at: StopAt | None = Field(
        None, description="end training early once held-out accuracy reaches a target: a student just good "
                          "enough, whatever its seed (how fast a seed learns varies several-fold)")

    @model_validator(mode="after")
    def _stop_at_needs_whole_weights(self) -> Training:
        if self.stop_at and self.deepspeed and self.deepspeed.stage == 3:
            raise ValueError("stop_at decodes with the model on one process, which ZeRO-3 partitions; "
                             "use deepspeed.stage 2, or drop stop_at")
        if self.stop_at and self.fsdp:
            raise ValueError("stop_at decodes with the model on one process, which FSDP shards; drop stop_at or fsdp")
        if self.deepspeed and self.fsdp:
            raise ValueError("deepspeed and fsdp both shard the model; choose one")
        if self.lora and (self.fsdp or (self.deepspeed and self.deepspeed.stage == 3)):
            raise ValueError("lora merges the adapter into whole weights at the end; use it with plain DDP or "
                             "deepspeed.stage 2, not with ZeRO-3 or fsdp")
        return self

    def by_kind(self, preset: bool) -> tuple[Training, dict]:
        """This config with every `None` default filled for a preset or a real checkpoint, and what was
        filled (printed at the start of training, so a user sees every default applied)."""
        defaults = getattr(self, "PRESET" if preset else "CHECKPOINT")
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return self.model_copy(update=filled), filled

    PRESET: ClassVar[dict] = PRESET_TRAINING
    CHECKPOINT: ClassVar[dict] = CHECKPOINT_TRAINING


# -- real data ------------------------------------------------------------------------------------

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


class Refine(Strict):
    """Rewrite existing chains of thought with the teacher: long-to-short or short-to-long."""

    direction: Literal["shorter", "longer"] = Field(description="shorter: condense the chain; longer: expand it")
    prompt: str | None = Field(
        None, description="override the rewrite instruction; {direction} and {verbosity} are replaced")


# -- stage configs ------------------------------------------------------------------------------


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


class ScoreConfig(Strict):
    """A judge rates every CoT sample: correctness, reasoning verbosity (RV), cognitive difficulty (CD)."""

    judge: Teacher = Field(default_factory=lambda: Teacher(model="judge", max_tokens=256),
                           description="an OpenAI-compatible judge (the synthetic server serves `judge`)")
    dimensions: list[Literal["correct", "rv", "cd"]] = Field(
        default_factory=lambda: ["correct", "rv", "cd"], min_length=1, description="what the judge rates")
    max_unscored_fraction: float = Field(0.5, ge=0, le=1,
                                         description="fail when more than this fraction of samples stay unscored")


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

    def required_inputs(self) -> tuple[str, ...]:
        return self.distill.required_inputs() if self.distill else ()


class RVPolicy(Strict):
    """Which CoTs ThoughtX keeps: reasoning verbosity (RV) matched to cognitive difficulty (CD)."""

    intercept: float = Field(-1.0, description="target RV = intercept + slope * CD (clamped to 0-9)")
    slope: float = Field(0.8, description="target RV = intercept + slope * CD")
    tolerance: float = Field(1.5, ge=0, description="keep CoTs whose RV is within this distance of the target")
    per_problem: int = Field(1, ge=1, description="CoTs kept per problem, closest to the target first")
    min_per_bin: int = Field(1, ge=0, description="fail when a CD level present in the data keeps fewer rows")
    max_per_bin: int | None = Field(None, ge=1, description="keep at most this many rows per CD level")
    require_correct: bool = Field(True, description="keep only CoTs judged correct")

    def target(self, cd: int) -> float:
        return min(9.0, max(0.0, self.intercept + self.slope * cd))


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


class Judgment(Strict):
    """How the judge's ratings of a candidate become one score: correctness, then length fit."""

    length_weight: float = Field(
        0.5, ge=0, description="weight of length fit (1 - |RV - target RV(CD)| / 9) beside correctness (0/1); "
                               "keep it below 1 so a correct answer always beats a wrong one")
    intercept: float = Field(-1.0, description="target RV = intercept + slope * CD (clamped to 0-9)")
    slope: float = Field(0.8, description="target RV = intercept + slope * CD")

    def score(self, correct: bool, rv: int | None, cd: int | None) -> float:
        fit = 0.0
        if rv is not None and cd is not None:
            target = min(9.0, max(0.0, self.intercept + self.slope * cd))
            fit = 1.0 - abs(rv - target) / 9.0
        return float(correct) + self.length_weight * fit


class StudentSamples(Strict):
    """Candidates sampled from the `student` input (a checkpoint): the answers GRPO will see."""

    per_problem: int = Field(4, ge=1, le=64, description="samples per problem")
    temperature: float = Field(1.0, gt=0, le=2.0)
    max_new_tokens: int = Field(160, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class RewardTraining(Training):
    """Reward-model training on transformers' Trainer over accelerate (one process; the head and loss are ours)."""

    PRESET: ClassVar[dict] = {"learning_rate": 1e-3, "max_length": 384, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 5e-6, "max_length": 4096, "gradient_checkpointing": True}

    max_steps: int = Field(400, ge=1, le=100_000_000, description="optimizer steps")
    max_length: int | None = Field(None, ge=16, le=1_048_576,
                                   description="tokens per prompt + response; longer ones are cut from the left; "
                                               "default 384 for presets, 4096 for checkpoints")
    regression_weight: float = Field(
        0.0, ge=0, description="weight of a squared-error term pulling each score toward the judge's score "
                               "(beside the pairwise Bradley-Terry loss); 0: pairwise only")
    lm_weight: float = Field(
        1.0, ge=0, description="weight of the language-model loss on the chosen responses: it keeps the likelihood "
                               "term a likelihood, so text the model would never write (runs of blank lines, "
                               "an empty answer) stays unlikely and a GRPO policy cannot win with it; 0: off")

    @model_validator(mode="after")
    def _no_deepspeed(self) -> RewardTraining:
        if self.deepspeed is not None:
            raise ValueError("the reward model trains in one process; remove train.deepspeed")
        return self


# The reward model's likelihood term: its forms, the default form, and the default weight (with the
# per-token mean, about a typical response's length in tokens, which gives it the scale the sum had).
Likelihood = Literal["mean", "sum"]
LIKELIHOOD: Likelihood = "mean"
LIKELIHOOD_WEIGHT = 20.0


class RewardModelConfig(Strict):
    """A scalar reward model distilled from the judge: preference pairs, then Bradley-Terry training."""

    model: Student = Field(default_factory=Student,
                           description="architecture and initial weights; ignored with a `base` input or "
                                       "init_from_student")
    init_from_student: bool = Field(
        True, description="start from the `student` input's weights (the SFT student reads this task "
                          "already) and add a one-output head; a `base` input (e.g. a student trained to "
                          "convergence, a better judge of steps than a student stopped early) comes first")
    likelihood_weight: float = Field(
        LIKELIHOOD_WEIGHT, ge=0,
        description="score = head + likelihood_weight * the model's log-likelihood of the response: what the "
                    "language model knows about right steps counts from the start (with the per-token mean, "
                    "about a typical response's length in tokens); 0 gives a plain sequence classifier")
    likelihood: Likelihood = Field(
        LIKELIHOOD, description="the log-likelihood per response token (mean), neutral to length, or summed (sum), "
                            "which pays for shorter responses and lets a GRPO policy win by saying nothing")
    judge: Teacher | None = Field(
        None, description="an OpenAI-compatible judge that rates candidates without scores (student samples, "
                          "unscored CoTs) on correctness, RV and CD; omit to take correctness from the verifier "
                          "and skip length fit for those")
    student_samples: StudentSamples = Field(default_factory=StudentSamples,
                                            description="sampling of the `student` input, when given")
    judgment: Judgment = Field(default_factory=Judgment, description="how ratings become one score per candidate")
    cut_chains: int = Field(
        1, ge=0, le=16,
        description="per problem, right teacher chains cut short after a random number of their lines, answering "
                    "the last number reached, as extra candidates for the judge: without them the head learns "
                    "that short answers are right, and a GRPO policy learns to skip steps; 0: none")
    min_margin: float = Field(0.2, ge=0, description="pair two candidates only when their scores differ by this much")
    pairs_per_problem: int = Field(8, ge=1, le=1000, description="at most this many pairs per problem")
    max_problems: int | None = Field(None, ge=1, description="use at most this many problems of the `cots` input")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of problems held out to measure pairwise accuracy")
    train: RewardTraining = Field(default_factory=RewardTraining)
    seed: int = 0

    def required_inputs(self) -> tuple[str, ...]:
        return ("student",) if self.init_from_student else ()


class RewardEndpoint(Strict):
    """A served reward model (`pai-distil reward serve`, or the same API on PAI-EAS)."""

    base_url: str = Field(description="base URL, e.g. http://127.0.0.1:8500 (the server answers POST /v1/score)")
    api_key_env: str | None = Field("PAI_DISTIL_REWARD_API_KEY",
                                    description="name of the environment variable holding the API key (never the key)")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    batch_size: int = Field(64, ge=1, le=1024, description="items per request")

    _url = field_validator("base_url")(classmethod(lambda cls, v: http_url(v)))


class Reward(Strict):
    """reward = rm_weight * reward-model score (standardised) + correct_weight * correctness - overlong penalty
    - format penalty."""

    rm_weight: float = Field(1.0, ge=0, description="weight of the reward model's score (0: not used)")
    correct_weight: float = Field(1.0, ge=0, description="weight of verifiable correctness, 0/1 (0: not used)")
    endpoint: RewardEndpoint | None = Field(
        None, description="score with a served reward model; omit to load the `reward_model` input in-process")
    overlong_penalty: float = Field(
        0.0, ge=0, description="subtracted from the reward of a completion cut at max_completion_length")
    format_penalty: float = Field(
        0.0, ge=0, description="subtracted from the reward of a completion with no final answer the verifier can "
                               "read (guards against a reward model that scores empty or broken answers high)")

    @model_validator(mode="after")
    def _some_signal(self) -> Reward:
        if self.rm_weight == 0 and self.correct_weight == 0:
            raise ValueError("rm_weight and correct_weight are both 0: there is nothing to learn from; "
                             "set at least one above 0")
        return self


class GRPOTraining(Strict):
    """GRPO's optimisation on TRL's GRPOTrainer over accelerate: one process per GPU, bf16 on GPUs."""

    PRESET: ClassVar[dict] = {"learning_rate": 2e-4, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 1e-6, "gradient_checkpointing": True}

    max_steps: int = Field(100, ge=1, le=100_000_000, description="policy updates (one batch of groups each)")
    prompts_per_step: int = Field(8, ge=1, description="problems per step; each gets `group_size` completions")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="micro-batches per step: each process computes the loss of prompts_per_step x "
                                      "group_size / (processes x this) completions at a time")
    learning_rate: float | None = Field(None, gt=0, le=10, description="peak learning rate; default 2e-4 for "
                                                                       "presets, 1e-6 for checkpoints")
    warmup_steps: int = Field(5, ge=0, le=100_000_000)
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: on where the GPU supports it, off on CPU")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass; default off for presets, on for checkpoints")
    lora: Lora | None = Field(None, description="train LoRA adapters (PEFT) instead of every weight; the KL "
                                                "reference is the model with the adapter off")
    checkpoint_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    max_bad_steps: int = Field(3, ge=1, description="fail the run after this many steps in a row with a non-finite loss")
    seed: int = 0

    by_kind = Training.by_kind


GRPOLoss = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]


class GRPOConfig(Strict):
    """Group Relative Policy Optimisation of the `student` input (also the KL reference)."""

    problems: SyntheticProblems | None = Field(
        None, description="training problems from the synthetic world; omit to read the `problems` input")
    data: ProblemData = Field(default_factory=ProblemData, description="how to read the `problems` input")
    reward: Reward = Field(default_factory=Reward)
    group_size: int = Field(8, ge=2, le=256, description="completions per problem; advantages are relative to the group")
    kl_coef: float = Field(0.02, ge=0, description="weight of the KL divergence to the starting checkpoint")
    max_completion_length: int = Field(160, ge=1, description="tokens per completion; longer ones are cut")
    truncation_warning: float = Field(0.5, ge=0, le=1,
                                      description="warn when more than this share of a step's completions is cut")
    temperature: float = Field(1.0, gt=0, le=2.0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1.0)
    scale_rewards: bool = Field(True, description="divide advantages by the group's standard deviation")
    loss_type: GRPOLoss = Field(
        "dapo", description="TRL's loss variant: dapo sums the token losses of a step over its completion tokens "
                            "(no length bias); grpo averages per completion; dr_grpo divides by a constant; bnpo per "
                            "micro-batch; cispo, sapo, luspo and vespo (sequence-level) as their papers")
    rollout: Literal["hf", "vllm"] = Field(
        "hf", description="how rollouts are sampled: hf (transformers generate) or vllm (vLLM colocated on the "
                          "training GPUs; needs vllm in the job image)")
    enable_thinking: bool | None = Field(None, description="passed to the chat template; null: its default")
    user_prompt: str | None = Field(None, description="override the user message; `{problem}` is replaced")
    sandbox: CodeSandbox = Field(default_factory=CodeSandbox, description="limits when verifying code answers")
    train: GRPOTraining = Field(default_factory=GRPOTraining)

    def required_inputs(self) -> tuple[str, ...]:
        needs = () if self.problems is not None else ("problems",)
        if self.reward.rm_weight > 0 and self.reward.endpoint is None:
            needs += ("reward_model",)
        return needs


DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DPOTraining(Training):
    """DPO's optimisation on TRL's DPOTrainer over accelerate: one process per GPU, bf16 on GPUs."""

    PRESET: ClassVar[dict] = {"learning_rate": 5e-4, "max_length": 512, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 5e-7, "max_length": 8192, "gradient_checkpointing": True}

    max_steps: int = Field(200, ge=1, le=100_000_000, description="optimizer steps")
    batch_size: int = Field(16, ge=1, le=1_000_000,
                            description="preference pairs per optimizer step, over all processes and accumulation "
                                        "steps (each pair is two sequences, and the reference scores both)")
    learning_rate: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                        description="peak learning rate; default 5e-4 for presets, 5e-7 for checkpoints")
    warmup_steps: int = Field(10, ge=0, le=100_000_000)
    max_length: int | None = Field(None, ge=16, le=1_048_576,
                                   description="tokens per prompt + response; longer ones are cut (see max_truncated); "
                                               "default 512 for presets, 8192 for checkpoints")
    checkpoint_every: int = Field(50, ge=1, description="save a resumable checkpoint every N steps")

    @model_validator(mode="after")
    def _no_packing(self) -> DPOTraining:
        if self.packing or self.padding_free:
            raise ValueError("TRL's DPO trainer pads each pair's two sequences; remove train.packing and "
                             "train.padding_free")
        return self


class DPOConfig(Strict):
    """Direct preference optimisation of the student on {prompt, chosen, rejected} pairs; the reference
    is the starting checkpoint."""

    student: Student = Field(default_factory=Student,
                             description="the policy's starting weights (and the reference) when no `student` input "
                                         "is given")
    loss_type: DPOLoss | list[DPOLoss] = Field(
        "sigmoid", description="TRL's DPO loss: sigmoid (DPO), ipo, hinge (SLiC), robust (with label_smoothing), "
                               "exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, "
                               "discopop, sigmoid_norm (length-normalised), sft (the chosen responses' NLL); a list "
                               "combines several with loss_weights (MPO: [sigmoid, bco_pair, sft])")
    loss_weights: list[float] | None = Field(None, description="one weight per loss_type entry; default 1 each")
    beta: float = Field(0.1, gt=0, le=100, description="how far the policy may move from the reference: higher "
                                                       "keeps it closer (IPO's tau)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: the assumed share of flipped preference "
                                                                  "labels; exo_pair: its epsilon")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of prompts held out to measure pairwise "
                                                              "preference, when the rows carry no `split` (the "
                                                              "reward-model stage's pairs do: its eval problems)")
    max_pairs: int | None = Field(None, ge=1, description="train on at most this many pairs")
    train: DPOTraining = Field(default_factory=DPOTraining)
    seed: int = 0

    @property
    def losses(self) -> list[str]:
        """loss_type as a list (TRL's form)."""
        return self.loss_type if isinstance(self.loss_type, list) else [self.loss_type]

    @model_validator(mode="after")
    def _weights_match(self) -> DPOConfig:
        losses = self.losses
        if not losses:
            raise ValueError("loss_type is an empty list; name at least one loss (sigmoid is DPO's)")
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(losses)} loss_type "
                             "entries; give one weight per loss")
        return self


class Endpoint(Strict):
    """An OpenAI-compatible chat endpoint serving the model to evaluate (vLLM, PAI-EAS, DashScope)."""

    base_url: str = Field(description="base URL ending in /v1")
    model: str = Field(description="model name the endpoint serves")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key (never the key)")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(4, ge=0, le=20, description="retries on 429, 5xx and timeouts")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout in seconds")

    _url = field_validator("base_url")(classmethod(lambda cls, v: http_url(v)))


class EvalModel(Strict):
    name: str = Field(description="label in the report")
    model: str | None = Field(None, description="preset, checkpoint path or hub id")
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


# -- job spec -----------------------------------------------------------------------------------


class Resources(Strict):
    """What one node of a job asks for; on PAI-DLC it becomes the pod's ResourceConfig."""

    cpu: float | None = Field(None, gt=0, description="vCPUs per node")
    memory_gb: float | None = Field(None, gt=0, description="memory per node, GiB")
    gpu: int = Field(0, ge=0, le=16, description="GPUs per node")
    shared_memory_gb: float | None = Field(None, gt=0, description="/dev/shm per node, GiB (NCCL, data loaders)")
    instance_type: str | None = Field(None, description="ECS instance type per node (PAI public resources)")


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
    procs_per_node: int | None = Field(
        None, ge=1, description="processes per node; unset: one (process, local) or the node's GPU count (pai)")
    resources: Resources = Field(default_factory=Resources)


# -- pipeline -----------------------------------------------------------------------------------


class PipelineStage(Strict):
    stage: str = Field(description="stage name, e.g. generate, slow-thinking, evaluate")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="input name -> id of an earlier stage in this pipeline, or a path")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config (see `pai-distil schema STAGE`)")
    nodes: int = Field(1, ge=1)
    procs_per_node: int | None = Field(
        None, ge=1, description="processes per node; unset: one (process, local) or the node's GPU count (pai)")
    resources: Resources = Field(default_factory=Resources, description="what each node asks for (pai)")


class Pipeline(Strict):
    name: str
    backend: Literal["process", "local", "pai"] = "process"
    stages: dict[str, PipelineStage] = Field(min_length=1, description="stage id -> stage; run in dependency order")


# -- loading ------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently), so a
    repeated stage id or setting is reported with its line instead of quietly overriding the first."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                "keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unique_json_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"key {k!r} appears twice in one object")
    return dict(pairs)


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON file as a mapping, with one-line errors (bad syntax, bytes or repeated keys)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {str(p)!r} does not exist; check the path")
    is_yaml = p.suffix in (".yaml", ".yml")
    try:
        text = p.read_bytes().decode("utf-8")
        data = yaml.load(text, _UniqueKeyLoader) if is_yaml else json.loads(text, object_pairs_hook=_unique_json_keys)
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: JSON syntax, or a repeated key
        first = str(e).strip().splitlines()[0]
        if isinstance(e, ValueError) and "appears twice" in first:  # JSON is YAML: its loader finds the line
            try:
                yaml.load(text, _UniqueKeyLoader)
            except yaml.YAMLError as located:
                first = str(located).strip().splitlines()[0]
        raise UserError(f"{what} file {str(p)!r} is not valid {'YAML' if is_yaml else 'JSON'}: {first}") from None
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
