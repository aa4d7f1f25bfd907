"""Learning from a teacher's token distributions: where they come from, and the divergence."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .. import model_refs
from .base import Strict
from .endpoint import Teacher


class LogitsTeacher(Strict):
    """The teacher whose token distributions a student learns from: a checkpoint run inside the job
    (batched, on the GPU when there is one), or a served model that returns prompt logprobs (vLLM's
    completions API with `echo` and `logprobs`). It must share the student's tokenizer."""

    model: str | None = Field(None, description="preset:<name>, a local checkpoint directory, a hub id or "
                                                "ms://ORG/NAME (ModelScope), run in the job")
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
