"""The reward-model stage: preference pairs from the judge's ratings, then Bradley-Terry training."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import Strict
from .endpoint import Teacher
from .rv_target import RVTarget
from .training import Student, Training


class Judgment(RVTarget):
    """How the judge's ratings of a candidate become one score: correctness, then length fit."""

    length_weight: float = Field(
        0.5, ge=0, description="weight of length fit (1 - |RV - target RV(CD)| / 9) beside correctness (0/1); "
                               "keep it below 1 so a correct answer always beats a wrong one")

    def score(self, correct: bool, rv: int | None, cd: int | None) -> float:
        fit = 0.0
        if rv is not None and cd is not None:
            fit = 1.0 - abs(rv - self.target(cd)) / 9.0
        return float(correct) + self.length_weight * fit


class StudentSamples(Strict):
    """Candidates sampled from the `student` input (a checkpoint): the answers GRPO will see."""

    per_problem: int = Field(4, ge=1, le=64, description="samples per problem")
    temperature: float = Field(1.0, gt=0, le=2.0)
    max_new_tokens: int = Field(160, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class RewardTraining(Training):
    """Reward-model training on transformers' Trainer over accelerate, on every rank (DDP, DeepSpeed ZeRO or
    FSDP as for SFT); the head and loss are ours."""

    PRESET: ClassVar[dict] = {"learning_rate": 1e-3, "max_length": 384, "gradient_checkpointing": False}
    CHECKPOINT: ClassVar[dict] = {"learning_rate": 5e-6, "max_length": 4096, "gradient_checkpointing": True}
    ALL_TURNS: ClassVar[bool] = False

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
