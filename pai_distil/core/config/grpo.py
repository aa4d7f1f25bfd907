"""The grpo stage: GRPO of the student with the distilled reward model and verifiable correctness."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from .base import Strict
from .data import CodeSandbox, ProblemData, SyntheticProblems
from .endpoint import RewardEndpoint
from .training import Lora, Optimisation, micro_batch_accumulation

# The prompt length a real checkpoint's micro-batch is sized for (a long problem statement in its chat template);
# `pai-distil plan` traces rows of this prompt and max_completion_length tokens.
PROMPT_TOKENS = 512


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


class GRPOTraining(Optimisation):
    """GRPO's optimisation on TRL's GRPOTrainer over accelerate: one process per GPU, bf16 on GPUs; a real
    checkpoint on several GPUs is sharded with FSDP unless lora or deepspeed is chosen (`by_kind`)."""

    PRESET: ClassVar[dict] = {"learning_rate": 2e-4, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 1e-6, "gradient_checkpointing": True}

    max_steps: int = Field(100, ge=1, le=100_000_000, description="policy updates (one batch of groups each)")
    prompts_per_step: int = Field(8, ge=1, description="problems per step; each gets `group_size` completions")
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, le=4096, description="micro-batches per step: each process computes the loss of prompts_per_step x "
                                         "group_size / (processes x this) completions at a time; default 1 for "
                                         "presets, for checkpoints as many as keep a micro-batch within 16,384 tokens "
                                         "of prompt and completion")
    learning_rate: float | None = Field(None, gt=0, le=10, description="peak learning rate; default 2e-4 for "
                                                                       "presets, 1e-6 for checkpoints")
    WARMUP: ClassVar[int] = 5
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass; default off for presets, on for checkpoints")
    lora: Lora | None = Field(None, description="train LoRA adapters (PEFT) instead of every weight; the KL "
                                                "reference is the model with the adapter off")
    checkpoint_every: int = Field(20, ge=1)
    log_every: int = Field(1, ge=1)
    # (group_size, prompt + max_completion_length tokens): the rollouts a micro-batch is sized by; the enclosing
    # GRPOConfig sets them (these are its defaults)
    _rollouts: tuple[int, int] = PrivateAttr((8, PROMPT_TOKENS + 160))

    def _default_accumulation(self, preset: bool, world: int, filled: dict) -> int:
        if preset:
            return 1
        group_size, row_tokens = self._rollouts
        return micro_batch_accumulation(self.prompts_per_step * group_size, world, row_tokens)[1]


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
    vllm_gpu_memory: float = Field(0.3, gt=0, lt=1, description="rollout vllm: share of each GPU's memory vLLM "
                                                               "takes (weights and KV cache); training keeps the rest")
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="rollout vllm: GPUs each colocated vLLM engine spans (tensor parallel); a "
                                    "divisor of the processes per node")
    enable_thinking: bool | None = Field(None, description="passed to the chat template; null: its default")
    user_prompt: str | None = Field(None, description="override the user message; `{problem}` is replaced")
    sandbox: CodeSandbox = Field(default_factory=CodeSandbox, description="limits when verifying code answers")
    train: GRPOTraining = Field(default_factory=GRPOTraining)

    @model_validator(mode="after")
    def _size_micro_batches(self) -> GRPOConfig:
        self.train._rollouts = (self.group_size, PROMPT_TOKENS + self.max_completion_length)
        return self

    def required_inputs(self) -> tuple[str, ...]:
        needs = () if self.problems is not None else ("problems",)
        if self.reward.rm_weight > 0 and self.reward.endpoint is None:
            needs += ("reward_model",)
        return needs
