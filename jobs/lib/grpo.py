"""GRPO on the shared trainer: each step samples a group of completions per problem, rewards them,
and takes one policy-gradient step on group-relative advantages with a KL penalty to the
starting checkpoint.

Why our own loop rather than TRL's GRPOTrainer: on two CPU cores almost all of a step is
sampling, and batched `generate` of a whole step's groups in one call (jobs/lib/generation) is
what makes it affordable; the loop also inherits the trainer's exact resume (sampling is seeded
by the step, so a resumed run draws the same completions), atomic checkpoints and SIGTERM
handling, and reads rewards from any scorer (in-process reward model, served one, verifier).
Updates are on-policy (one optimizer step per batch of samples), so the importance ratio is 1
and needs no clipping.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pai_distil.specs import GRPOConfig
from pai_distil.verifiers import check

from .generation import generate
from .legacy_loop import Trainer

TRUNCATION_WARN_EVERY = 10  # steps between two warnings about cut completions


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..T-1, under the sampling temperature (the distribution
    the completions were drawn from)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    return torch.gather(F.log_softmax(logits, -1), 2, input_ids[:, 1:, None])[..., 0]


def group_advantages(rewards: torch.Tensor, group: int, scale: bool) -> torch.Tensor:
    r = rewards.view(-1, group)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


class GRPOTrainer(Trainer):
    """Examples are problem rows with their rendered prompt ids; `scorer(prompts, completions)`
    returns reward-model scores (None when the reward model's weight is 0)."""

    def __init__(self, model, tokenizer, examples, settings, checkpoint_dir, metrics_path, *, cfg: GRPOConfig,
                 reference, scorer: Callable[[list[str], list[str]], list[float]] | None, log=print):
        super().__init__(model, tokenizer, examples, settings, checkpoint_dir, metrics_path, log=log)
        self.cfg, self.reference, self.scorer = cfg, reference, scorer
        self._warned_at = -TRUNCATION_WARN_EVERY

    def make_batch(self, examples: list[dict]) -> dict:
        cfg, g = self.cfg, self.cfg.group_size
        rows = [e for e in examples for _ in range(g)]
        prompts = [e["prompt"] for e in rows]
        torch.manual_seed(self.s.seed * 1_000_003 + self.step)  # a resumed step samples the same completions
        outs = generate(self.model, self.tokenizer, prompts, cfg.max_completion_length, batch_size=len(prompts),
                        enable_thinking=cfg.enable_thinking, temperature=cfg.temperature, top_p=cfg.top_p)
        self.model.train()
        texts = [o["text"] for o in outs]
        verdicts = [check(e, t) for e, t in zip(rows, texts)]
        correct = torch.tensor([float(v.correct) for v in verdicts])
        no_answer = torch.tensor([float(v.extracted is None) for v in verdicts])
        truncated = torch.tensor([float(o["truncated"]) for o in outs])
        rm = torch.tensor(self.scorer(prompts, texts)) if self.scorer else torch.zeros(len(texts))
        w = cfg.reward
        rewards = (w.rm_weight * rm + w.correct_weight * correct - w.overlong_penalty * truncated
                   - w.format_penalty * no_answer)
        adv = group_advantages(rewards, g, cfg.scale_rewards)

        seqs = [e["prompt_ids"] + o["ids"] for e, o in zip(rows, outs)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        completion = torch.zeros_like(ids)
        for i, (e, s) in enumerate(zip(rows, seqs)):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            completion[i, len(e["prompt_ids"]):len(s)] = 1
        with torch.no_grad():
            ref = token_logprobs(self.reference, ids, mask, cfg.temperature) if cfg.kl_coef else None

        cut = truncated.mean().item()
        if cut > cfg.truncation_warning and self.step - self._warned_at >= TRUNCATION_WARN_EVERY:
            self._warned_at = self.step
            self.log(f"warning: {cut:.0%} of the completions of step {self.step + 1} reached max_completion_length="
                     f"{cfg.max_completion_length} and were cut; raise it, or set reward.overlong_penalty")
        lengths = torch.tensor([float(o["tokens"]) for o in outs])
        solved = correct.view(-1, g).max(1).values
        stats = {"reward": rewards.mean().item(), "accuracy": correct.mean().item(), "length": lengths.mean().item(),
                 "truncated": cut, "no_answer": no_answer.mean().item(),
                 "rm_score": rm.mean().item() if self.scorer else None, "solved_groups": solved.mean().item(),
                 "mixed_groups": (correct.view(-1, g).std(1) > 0).float().mean().item()}
        return {"input_ids": ids, "attention_mask": mask, "completion_mask": completion[:, 1:], "advantages": adv,
                "ref_logprobs": ref, "stats": stats}

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logp = token_logprobs(self.model, batch["input_ids"], batch["attention_mask"], self.cfg.temperature)
        mask = batch["completion_mask"].float()
        # exp(logp - logp.detach()) is 1 but carries the gradient of log p: on-policy REINFORCE with
        # group-relative advantages, one value per completion.
        per_token = -torch.exp(logp - logp.detach()) * batch["advantages"][:, None]
        kl = torch.zeros_like(logp)
        if batch["ref_logprobs"] is not None:
            delta = batch["ref_logprobs"] - logp
            kl = torch.exp(delta) - delta - 1  # the k3 estimator: unbiased, always >= 0
            per_token = per_token + self.cfg.kl_coef * kl
        tokens = mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / tokens
        mean_kl = ((kl * mask).sum() / tokens).item()
        extra = {k: round(v, 4) for k, v in batch["stats"].items() if v is not None}
        return loss, {**extra, "kl": round(mean_kl, 5)}
