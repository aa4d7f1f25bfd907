"""What one training step of each stage holds and runs, at the shapes a plan asks for.

Each stage's step builds the models the job holds (student or policy, reference, teacher, reward
model), a micro-batch as the stage's collator makes it, at `train.max_length`, and calls the stage's
own loss entry points (`sft_loss`, `kd_loss`, `pair_loss`, `dpo_logps`, TRL's GRPO log-probabilities),
so a change to the training code changes the plan. The defaults are the job's (`by_kind` on the
world the plan is for): what is planned is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from pai_distil.core.config.grpo import PROMPT_TOKENS as GRPO_PROMPT_TOKENS  # the prompt the job sizes micro-batches by
from pai_distil_jobs.plan.trace import build_model, concrete, fake_mesh, local_numel, shard_fsdp

PROMPT_SHARE = 0.1  # of a training row: the prompt (not trained); the rest is the chain and answer
IGNORE = -100


@dataclass
class Step:
    """One stage's training step, ready to trace."""

    root: torch.nn.Module  # the trained model, sharded as the job shards it
    run: Callable[[], torch.Tensor]  # forward of one micro-batch: the loss to backward
    micro: int  # rows per process per forward pass
    accumulation: int
    rows_per_step: int  # sequences per optimizer step over every process
    tokens_per_row: int
    sharding: str  # "fsdp full_shard", "deepspeed zero-3 (analytic)", "ddp", "single process"
    frozen_gib: float = 0.0  # reference / teacher / reward-model weights beside the trained model
    vllm_share: float = 0.0  # of each GPU's memory, taken by a colocated vLLM engine
    notes: list[str] = field(default_factory=list)
    inputs: tuple = ()


def _train_settings(train, preset: bool, world: int):
    """The job's own defaults for this world (FSDP and accumulation included), on GPUs."""
    return train.by_kind(preset, world, True)[0]


def _micro(rows: int, world: int, accumulation: int) -> int:
    """The job's own split of `rows` a step (trainer.per_device_batch), for the planned world."""
    from types import SimpleNamespace

    from pai_distil_jobs.train.trainer import per_device_batch

    return per_device_batch(SimpleNamespace(batch_size=rows, gradient_accumulation_steps=accumulation), world)


def _trained(config: dict, train, world: int, lm_factory=None):
    """The trained model, checkpointed and sharded as the job would: fp32 master weights; with LoRA a bf16
    base (sharded_load's rule) and fp32 adapters."""
    lora = getattr(train, "lora", None)
    if lora:
        model = _with_lora(config, lora)
    else:
        model = build_model(config, torch.float32)
    if lm_factory is not None:
        model = lm_factory(model)
    if train.gradient_checkpointing:
        inner = getattr(model, "lm", model)
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(train, "fsdp", None):
        shard_fsdp(model, world, train.fsdp.sharding == "full_shard")
        return model, f"FSDP2 {train.fsdp.sharding} over {world}"
    if getattr(train, "deepspeed", None):
        return model, f"DeepSpeed ZeRO-{train.deepspeed.stage} over {world} (analytic)"
    return model, ("DDP over %d" % world) if world > 1 else "one process"


def _with_lora(config: dict, lora):
    """PEFT's adapters on a bf16 base. PEFT moves each adapter to its base layer's device, which fake tensors
    cannot swap, so the model is built on the meta device outside the fake mode and materialised inside it."""
    from peft import get_peft_model
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from pai_distil_jobs.train.sft_train import lora_config

    with unset_fake_temporarily(), torch.device("meta"):
        model = get_peft_model(build_model(config, torch.bfloat16), lora_config(lora))
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model.to_empty(device="cpu")


def _frozen(config: dict, fsdp: bool) -> tuple[torch.nn.Module, float]:
    """A model the step runs without gradients (reference, teacher) in bf16, laid out as the job's
    `sharded_load.shard_frozen` lays it out under FSDP, else whole; and the GiB of its weights on this rank
    that the trace does not see (whole, the MemTracker counts them when the step runs it)."""
    from pai_distil_jobs.train.sharded_load import shard_frozen_fsdp

    model = build_model(config, torch.bfloat16).eval().requires_grad_(False)
    if not fsdp:
        return model, 0.0
    shard_frozen_fsdp(model, fake_mesh())
    return model, local_numel(model.parameters()) * 2 / 2**30


def _sft_batch(rows: int, length: int, vocab: int, k: int = 0) -> dict:
    """KDCollator's batch (SFTTrainer's with k = 0): ids, mask, labels with the prompt ignored, stored top-k."""

    def make():
        ids = torch.randint(0, vocab, (rows, length))
        labels = ids.clone()
        labels[:, : max(1, int(length * PROMPT_SHARE))] = IGNORE
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if k:
            batch["topk_ids"] = torch.randint(0, vocab, (rows, length, k))
            batch["topk_lps"] = torch.randn(rows, length, k).log_softmax(-1)
        return batch

    return concrete(make)


def sft_step(cfg, models: dict, world: int, preset: bool) -> Step:
    """slow-thinking / adaptive-thinking: SFT, or KD on stored top-k, or on-policy KD with a teacher."""
    from pai_distil_jobs.train.distill import kd_loss
    from pai_distil_jobs.train.sft_train import sft_loss

    train = _train_settings(cfg.train, preset, world)
    student = models["student"]
    micro = _micro(train.batch_size, world, train.gradient_accumulation_steps)
    model, sharding = _trained(student, train, world)
    distill = getattr(cfg, "distill", None)
    stored_k = distill.top_k if distill is not None and distill.mode == "logits" else 0
    batch = _sft_batch(micro, train.max_length, student["vocab_size"], stored_k)
    step = Step(model, lambda: sft_loss(model, batch)[0], micro, train.gradient_accumulation_steps,
                train.batch_size, train.max_length, sharding, inputs=tuple(batch.values()))
    if distill is None:
        return step
    k = distill.top_k
    if distill.mode == "on-policy":
        from pai_distil_jobs.train.teacher_topk import topk_at

        teacher, step.frozen_gib = _frozen(models["teacher"], bool(train.fsdp))
        if distill.rollout == "vllm":
            step.vllm_share = distill.vllm_gpu_memory
        step.notes.append(f"on-policy: the teacher scores every row ({'sharded' if train.fsdp else 'whole'}, bf16)")

        def on_policy():
            with torch.no_grad():
                ids, lps = topk_at(teacher, batch["input_ids"], batch["attention_mask"], batch["labels"], k)
            return kd_loss(model, {**batch, "topk_ids": ids, "topk_lps": lps}, distill)[0]

        step.run = on_policy
        return step
    step.run = lambda: kd_loss(model, batch, distill)[0]
    return step


def _pair_rows(micro: int, length: int, vocab: int, mask_key: str) -> dict:
    """Chosen rows then rejected ones, each `length` tokens, the response the last 1 - PROMPT_SHARE."""

    def make():
        ids = torch.randint(0, vocab, (2 * micro, length))
        mask = torch.ones_like(ids)
        mask[:, : max(1, int(length * PROMPT_SHARE))] = 0
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), mask_key: mask, "targets": torch.zeros(2 * micro)}

    return concrete(make)


def reward_model_step(cfg, models: dict, world: int, preset: bool) -> Step:
    """reward-model: Bradley-Terry over pairs, with the likelihood term and the LM loss the config asks for."""
    from pai_distil_jobs.train.reward import RewardModel, pair_loss

    train = _train_settings(cfg.train, preset, world)
    lm = models["model"]
    micro = _micro(train.batch_size, world, train.gradient_accumulation_steps)
    model, sharding = _trained(lm, train, world, lambda m: RewardModel(m, cfg.likelihood_weight, cfg.likelihood))
    batch = _pair_rows(micro, train.max_length, lm["vocab_size"], "response_mask")
    return Step(model, lambda: pair_loss(model, batch, train.regression_weight, train.lm_weight)[0], micro,
                train.gradient_accumulation_steps, train.batch_size, train.max_length, sharding,
                inputs=tuple(batch.values()))


def dpo_step(cfg, models: dict, world: int, preset: bool) -> Step:
    """dpo: the policy's and the reference's log-probabilities of chosen and rejected, and the sigmoid loss."""
    import torch.nn.functional as F

    from pai_distil_jobs.train.dpo import dpo_logps

    train = _train_settings(cfg.train, preset, world)
    student = models["student"]
    micro = _micro(train.batch_size, world, train.gradient_accumulation_steps)
    model, sharding = _trained(student, train, world)
    batch = _pair_rows(micro, train.max_length, student["vocab_size"], "completion_mask")
    step = Step(model, None, micro, train.gradient_accumulation_steps, train.batch_size, train.max_length, sharding,
                inputs=tuple(batch.values()))
    reference = None
    if not train.lora:
        reference, step.frozen_gib = _frozen(student, bool(train.fsdp))

    def loss():
        chosen, rejected = dpo_logps(model, batch)
        with torch.no_grad():
            ref_c, ref_r = dpo_logps(reference, batch) if reference is not None else (chosen.detach(), rejected.detach())
        return -F.logsigmoid(cfg.beta * ((chosen - ref_c) - (rejected - ref_r))).mean()

    step.run = loss
    return step


def grpo_step(cfg, models: dict, world: int, preset: bool) -> Step:
    """grpo: one micro-batch of completions through TRL's per-token log-probabilities (its fused LM head, in
    tiles of positions: never the [rows, tokens, vocab] logits) of the policy and, with a KL term, of the
    reference (bf16, sharded as `sharded_load.load_policy_and_reference` shards it), the reward model scoring
    them in-process (bf16, whole on each GPU, as `RewardScorer` loads it), and vLLM's share of each GPU."""
    from trl.trainer.utils import add_fused_lm_head

    train = cfg.train.by_kind(preset, world, True)[0]
    policy = models["student"]
    completions = train.prompts_per_step * cfg.group_size
    micro = _micro(completions, world, train.gradient_accumulation_steps)
    model, sharding = _trained(policy, train, world)
    add_fused_lm_head(model, temperature=cfg.temperature, outputs=("log_probs", "entropy"))  # as GRPOTrainer
    length = GRPO_PROMPT_TOKENS + cfg.max_completion_length
    keep = cfg.max_completion_length
    rows = concrete(lambda: {"ids": torch.randint(0, policy["vocab_size"], (micro, length)),
                             "mask": torch.ones(micro, length, dtype=torch.long),
                             "resp": torch.cat([torch.zeros(micro, length - keep, dtype=torch.long),
                                                torch.ones(micro, keep, dtype=torch.long)], 1),
                             "labels": torch.full((micro, length), 1)})  # the completion's tokens: scored
    ids, mask, labels = rows["ids"], rows["mask"], rows["labels"]
    labels[:, :-keep] = IGNORE  # the prompt: not scored (TRL's labels)
    step = Step(model, None, micro, train.gradient_accumulation_steps, completions, length, sharding,
                inputs=(ids, mask))
    step.notes.append(f"rows: a {GRPO_PROMPT_TOKENS}-token prompt and {keep} completion tokens")
    reference = scorer = None
    if cfg.kl_coef and not train.lora:
        reference, step.frozen_gib = _frozen(policy, bool(train.fsdp))
        add_fused_lm_head(reference, temperature=cfg.temperature)
    if cfg.reward.rm_weight and cfg.reward.endpoint is None and "reward_model" in models:
        from pai_distil_jobs.train.reward import RewardModel

        lm, made = build_model(models["reward_model"], torch.bfloat16), torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # its head too (a fake's `.to` cannot swap a parameter)
        try:
            scorer = RewardModel(lm).eval()
        finally:
            torch.set_default_dtype(made)
    if cfg.rollout == "vllm":
        step.vllm_share = cfg.vllm_gpu_memory  # TRL's vllm_gpu_memory_utilization

    def logps(m):
        out = m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        return out.log_probs[:, -keep:]

    def loss():
        if scorer is not None:
            with torch.no_grad():
                scorer(ids, mask, rows["resp"])
        per_token = logps(model)
        ratio = torch.exp(per_token - per_token.detach())
        total = -(ratio * torch.randn(micro, 1)).mean()
        if reference is not None:
            with torch.no_grad():
                ref = logps(reference)
            total = total + cfg.kl_coef * (torch.exp(ref - per_token) - (ref - per_token) - 1).mean()
        return total

    step.run = loss
    return step


STEPS = {"slow-thinking": sft_step, "adaptive-thinking": sft_step, "reward-model": reward_model_step,
         "dpo": dpo_step, "grpo": grpo_step}


def trainable_numel(model) -> int:
    """Elements this rank's optimizer holds state for."""
    return local_numel(p for p in model.parameters() if p.requires_grad)
