"""The model to train and how: one set of optimisation settings, with the defaults a tiny preset and a
real checkpoint each need."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from .. import model_refs
from .base import Strict
from .data import SyntheticProblems


class Student(Strict):
    """The model to train: a tiny preset (`preset:tiny`), a local checkpoint path or a hub id."""

    model: str = Field("preset:tiny", description="preset:<name>, a local checkpoint directory, a hub id, or "
                                                 "ms://ORG/NAME (ModelScope)")
    seed: int = Field(0, description="initialisation seed for presets")

    _model = field_validator("model")(classmethod(lambda cls, v: model_refs.check(v)))


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

# `train.report_to`: the package each tracker needs where the job runs.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}

# A real checkpoint's default micro-batch: this many tokens per process and forward pass (2 rows at 8192,
# 1 at 16k and above); gradient accumulation makes up the rest of train.batch_size. Checked by
# `pai-distil plan` at the qwen3-8b shape: activations stay a fraction of an 80 GiB GPU up to 32k tokens.
TOKENS_PER_MICRO_BATCH = 16_384


LrScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup", "inverse_sqrt"]
Optim = Literal["adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop"]

PER_DEVICE = ("per_device_train_batch_size is not a field here: train.batch_size is the global batch, "
              "batch_size = per-device batch x processes (nodes x processes per node) x gradient_accumulation_steps; "
              "e.g. 4 per device on 8 GPUs with accumulation 2: batch_size: 64")

# TrainingArguments fields a training stage sets from this config or the job contract needs
# (jobs/train/trainer.py training_arguments), refused in `extra` at validate; the value names the field to
# set instead. Fields a stage's own trainer sets (DPO's beta, GRPO's num_generations) the job refuses.
# Fixed defaults with no field of ours (adam_beta2, max_grad_norm) are not here: `extra` may change them.
OURS = {"max_steps": "max_steps", "num_train_epochs": "epochs", "learning_rate": "learning_rate",
        "warmup_steps": "warmup_steps", "weight_decay": "weight_decay", "lr_scheduler_type": "lr_scheduler",
        "optim": "optim", "save_steps": "checkpoint_every", "save_total_limit": "keep_checkpoints",
        "logging_steps": "log_every", "seed": "seed", "data_seed": "seed", "bf16": "bf16",
        "gradient_checkpointing": "gradient_checkpointing", "deepspeed": "deepspeed", "fsdp": "fsdp",
        "fsdp_config": "fsdp", "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length",
        "packing": "packing", "padding_free": "padding_free"}
SET_BY_US = frozenset(OURS) | {
    "output_dir", "logging_nan_inf_filter", "save_strategy", "fp16", "use_cpu", "report_to",
    "disable_tqdm", "dataloader_drop_last", "ddp_find_unused_parameters", "log_level", "remove_unused_columns",
    "gradient_checkpointing_kwargs", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor"}


def micro_batch_accumulation(batch_size: int, world: int, max_length: int) -> tuple[int, int]:
    """(rows per process per forward pass, accumulation steps) for a checkpoint's `batch_size` on `world`
    processes: the largest micro-batch within TOKENS_PER_MICRO_BATCH that splits the batch exactly."""
    per_rank = max(1, batch_size // world)
    cap = max(1, TOKENS_PER_MICRO_BATCH // max_length)
    micro = max(m for m in range(1, min(cap, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def default_warmup(max_steps: int, longest: int) -> int:
    """Warmup steps when none are set: a tenth of the run, at most `longest` (2 steps warm up over none,
    rather than over 30 that never end)."""
    return min(longest, max_steps // 10)


class Optimisation(Strict):
    """What every training stage sets the same way: steps, rate, precision, adapters, checkpoints. Each
    stage's settings extend this and change the defaults its method needs."""

    PRESET: ClassVar[dict] = PRESET_TRAINING
    CHECKPOINT: ClassVar[dict] = CHECKPOINT_TRAINING
    WARMUP: ClassVar[int] = 30  # the default warmup of a long run; a short one warms up over a tenth of it

    max_steps: int = Field(600, ge=1, le=100_000_000, description="optimizer steps (or give epochs instead)")
    epochs: float | None = Field(
        None, gt=0, le=100_000, validation_alias=AliasChoices("epochs", "num_train_epochs"),
        description="passes over the training rows instead of max_steps: the job sets max_steps to "
                    "ceil(epochs x rows / batch_size) once it has read (and filtered) the rows; give one of the two")
    lr_scheduler: LrScheduler = Field(
        "cosine", validation_alias=AliasChoices("lr_scheduler", "lr_scheduler_type"),
        description="learning-rate schedule after the warmup: cosine decays to 10 % of the peak at schedule_steps "
                    "(this project's); linear (to 0), constant, constant_with_warmup and inverse_sqrt are "
                    "transformers' own over max_steps")
    optim: Optim = Field("adamw_torch_fused", description="optimizer, by its transformers name "
                                                         "(TrainingArguments.optim)")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="more TrainingArguments / TRL config fields by name, passed through as "
                                          "given (e.g. {adam_beta1: 0.85, max_grad_norm: 0.5}); a field this config "
                                          "already sets is refused: set ours instead")
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, le=4096, description="micro-batches per optimizer step: each process takes "
                                         "batch_size / (processes x this) sequences at a time; default 1 for "
                                         "presets, for checkpoints as many as keep a micro-batch within 16,384 tokens")
    learning_rate: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                        description="peak learning rate; default 3e-3 for presets, 1e-5 for checkpoints")
    warmup_steps: int | None = Field(None, ge=0, le=100_000_000,
                                     description="steps of linear learning-rate warmup, fewer than max_steps; "
                                                 "default a tenth of max_steps, at most 30 (DPO 10, GRPO 5)")
    weight_decay: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: on where the GPU supports it, off on CPU")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass (less memory, ~30 % slower); default off "
                          "for presets, on for checkpoints")
    lora: Lora | None = Field(None, description="train LoRA adapters (PEFT) instead of every weight")
    checkpoint_every: int = Field(100, ge=1, validation_alias=AliasChoices("checkpoint_every", "save_steps"),
                                  description="save a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, validation_alias=AliasChoices("keep_checkpoints", "save_total_limit"),
                                  description="complete checkpoints kept; older ones are removed")
    log_every: int = Field(10, ge=1, validation_alias=AliasChoices("log_every", "logging_steps"),
                           description="write metrics every N steps")
    max_bad_steps: int = Field(3, ge=1, description="fail the run after this many steps in a row with a non-finite loss")
    seed: int = 0
    deepspeed: DeepSpeed | None = Field(
        None, description="train with DeepSpeed ZeRO (a config generated from these fields); omit for plain DDP")
    fsdp: FSDP | None = Field(None, description="shard the model with PyTorch FSDP; omit for plain DDP")
    report_to: list[Literal["tensorboard", "wandb", "swanlab", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers the training logs go to: tensorboard (event files in the output's "
                    "tensorboard/ folder, which `pai-distil runs tensorboard` and PAI open), wandb, swanlab, mlflow "
                    "(each set up by its own login and environment variables); [] for metrics.jsonl alone")

    def by_kind(self, preset: bool, world: int = 1, gpus: bool = False):
        """This config with every `None` default filled for a preset or a real checkpoint on `world`
        processes (`gpus`: one per GPU), and what was filled (printed at the start of training, so a user
        sees every default applied; `pai-distil plan` traces the same).

        A real checkpoint on several GPUs with no sharding or adapters chosen (`_may_shard`) is also sharded
        with FSDP (full_shard): plain DDP keeps a whole fp32 model, its gradients and Adam's state on every
        GPU, 16 bytes a parameter (128 GB for 8B)."""
        defaults = self.PRESET if preset else self.CHECKPOINT
        filled = {k: v for k, v in defaults.items() if getattr(self, k, "unset") is None}
        if self.warmup_steps is None and self.epochs is None:  # with epochs the job sets it with max_steps
            filled["warmup_steps"] = default_warmup(self.max_steps, self.WARMUP)
        if self.gradient_accumulation_steps is None:
            filled["gradient_accumulation_steps"] = self._default_accumulation(preset, world, filled)
        if not preset and gpus and world > 1 and self._may_shard():
            filled["fsdp"] = FSDP()
        return self.model_copy(update=filled), filled

    def _default_accumulation(self, preset: bool, world: int, filled: dict) -> int:
        return 1

    def _may_shard(self) -> bool:
        """Nothing chosen that FSDP would override or break (DeepSpeed, FSDP itself, LoRA's merge)."""
        return not (self.deepspeed or self.fsdp or self.lora)

    @model_validator(mode="before")
    @classmethod
    def _global_batch(cls, data):
        if isinstance(data, dict) and "per_device_train_batch_size" in data:
            raise ValueError(PER_DEVICE)
        return data

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Optimisation:
        if self.epochs is not None and "max_steps" in self.model_fields_set:
            raise ValueError("give train.epochs or train.max_steps, not both: epochs sets max_steps from the rows")
        if self.lr_scheduler != "cosine" and getattr(self, "schedule_steps", None) is not None:
            raise ValueError(f"schedule_steps sets the length of the cosine schedule; lr_scheduler {self.lr_scheduler} "
                             "runs over max_steps: drop schedule_steps")
        clash = sorted(set(self.extra) & SET_BY_US)
        if clash:
            named = [f"{c} (set train.{OURS[c]} instead)" if c in OURS else f"{c} (the job sets it)" for c in clash]
            raise ValueError(f"extra sets what this config sets already: {', '.join(named)}; remove it from extra")
        return self

    @model_validator(mode="after")
    def _warmup_within_the_run(self) -> Optimisation:
        if self.epochs is None and self.warmup_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps = {self.warmup_steps} is not below max_steps = {self.max_steps}: the "
                             "learning rate would never reach its peak; set warmup_steps below max_steps (e.g. "
                             f"{default_warmup(self.max_steps, self.WARMUP)}), or drop it for the default")
        return self

    @model_validator(mode="after")
    def _one_sharding(self) -> Optimisation:
        if self.deepspeed and self.fsdp:
            raise ValueError("deepspeed and fsdp both shard the model; choose one")
        if self.lora and (self.fsdp or (self.deepspeed and self.deepspeed.stage == 3)):
            raise ValueError("lora merges the adapter into whole weights at the end; use it with plain DDP or "
                             "deepspeed.stage 2, not with ZeRO-3 or fsdp")
        return self


class Training(Optimisation):
    """Supervised training on TRL and accelerate: one process per GPU (or CPU process), bf16 on GPUs."""

    schedule_steps: int | None = Field(
        None, ge=1, le=100_000_000,
        description="length of the learning-rate schedule (warmup, then cosine decay); default "
                    "max_steps. Above max_steps, training stops partway down the schedule: a "
                    "student that has not converged, with room left for reinforcement learning")
    batch_size: int = Field(32, ge=1, le=1_000_000,
                            description="sequences per optimizer step, over all processes and accumulation steps")
    max_length: int | None = Field(None, ge=16, le=1_048_576,
                                   description="tokens per training sequence; longer ones are cut (see max_truncated); "
                                               "default 1024 for presets, 8192 for checkpoints")
    max_truncated: float = Field(0.05, ge=0, le=1, description="fail when more than this share of rows is cut at "
                                                               "max_length (warned above 1 %)")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention kernel; auto: flash_attention_2 on GPUs when installed, else sdpa")
    packing: bool = Field(False, description="pack several rows into each max_length sequence (padding-free, "
                                             "attention kept within each row); faster on GPUs, slower on CPU")
    padding_free: bool = Field(False, description="concatenate each micro-batch's rows into one sequence without "
                               "padding, attention kept within each row by flash-attention's varlen kernel "
                               "(implied by packing); without flash-attention (CPU, or no flash-attn package) "
                               "batches stay padded and the log says so in one line")
    stop_at: StopAt | None = Field(
        None, description="end training early once held-out accuracy reaches a target: a student just good "
                          "enough, whatever its seed (how fast a seed learns varies several-fold)")
    all_turns: bool = Field(False, description="train every assistant turn of a multi-turn chat row (earlier turns "
                                               "as the chat template renders them, e.g. without their thoughts); "
                                               "default: the final assistant turn only, earlier turns are context")

    ALL_TURNS: ClassVar[bool] = True  # whether the stage trains chat rows turn by turn

    def _may_shard(self) -> bool:
        return super()._may_shard() and not self.stop_at  # stop_at decodes with the whole model on rank 0

    def _default_accumulation(self, preset: bool, world: int, filled: dict) -> int:
        if preset:
            return 1
        return micro_batch_accumulation(self.batch_size, world, self.max_length or filled["max_length"])[1]

    @model_validator(mode="after")
    def _all_turns_where_trained(self) -> Training:
        if self.all_turns and not self.ALL_TURNS:
            raise ValueError("this stage trains responses to a prompt, not chat rows turn by turn; drop "
                             "train.all_turns")
        return self

    @model_validator(mode="after")
    def _stop_at_needs_whole_weights(self) -> Training:
        if self.stop_at and self.deepspeed and self.deepspeed.stage == 3:
            raise ValueError("stop_at decodes with the model on one process, which ZeRO-3 partitions; "
                             "use deepspeed.stage 2, or drop stop_at")
        if self.stop_at and self.fsdp:
            raise ValueError("stop_at decodes with the model on one process, which FSDP shards; drop stop_at or fsdp")
        return self
