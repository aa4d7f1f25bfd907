"""The dpo stage: direct preference optimisation on {prompt, chosen, rejected} pairs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import Strict
from .training import Student, Training


DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DPOTraining(Training):
    """DPO's optimisation on TRL's DPOTrainer over accelerate: one process per GPU, bf16 on GPUs."""

    PRESET: ClassVar[dict] = {"learning_rate": 5e-4, "max_length": 512, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 5e-7, "max_length": 8192, "gradient_checkpointing": True}
    ALL_TURNS: ClassVar[bool] = False

    max_steps: int = Field(200, ge=1, le=100_000_000, description="optimizer steps")
    batch_size: int = Field(16, ge=1, le=1_000_000,
                            description="preference pairs per optimizer step, over all processes and accumulation "
                                        "steps (each pair is two sequences, and the reference scores both)")
    learning_rate: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                        description="peak learning rate; default 5e-4 for presets, 5e-7 for checkpoints")
    WARMUP: ClassVar[int] = 10
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
