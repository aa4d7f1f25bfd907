"""The scalar reward model: encoding (prompt, response) pairs, Bradley-Terry training on the shared
trainer, and scoring in-process (GRPO, the reward server).

A reward model is a Hugging Face sequence classifier with one output, saved with
`reward_stats.json` (mean and standard deviation of its scores on held-out candidates): scores
are reported standardised with them, so a weight in GRPO's reward means the same for every model.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from .trainer import Trainer

STATS = "reward_stats.json"


def encode(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of the conversation as the chat template writes it; cut from the left when too
    long, so the answer at the end is always seen."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)[-max_length:]


def pad_left(seqs: list[list[int]], pad: int) -> dict:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def scores_of(model, batch: dict) -> torch.Tensor:
    """One score per sequence (the head's output at the last token)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]


class RewardTrainer(Trainer):
    """Pairwise Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected), plus an optional squared
    error pulling each score toward its judge score. Examples: {"chosen", "rejected"} token ids
    and their judge scores."""

    def __init__(self, *args, regression_weight: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.regression_weight = regression_weight

    def make_batch(self, examples: list[dict]) -> dict:
        batch = pad_left([e["chosen"] for e in examples] + [e["rejected"] for e in examples],
                         self.tokenizer.pad_token_id)
        batch["targets"] = torch.tensor([e["chosen_score"] for e in examples] + [e["rejected_score"] for e in examples])
        return batch

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        r = scores_of(self.model, batch)
        n = r.shape[0] // 2
        margin = r[:n] - r[n:]
        loss = -F.logsigmoid(margin).mean()
        if self.regression_weight:
            loss = loss + self.regression_weight * F.mse_loss(r, batch["targets"].to(r.dtype))
        return loss, {"pair_accuracy": round((margin > 0).float().mean().item(), 4)}


@torch.inference_mode()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
                batch_size: int = 64) -> list[float]:
    """Raw scores of (prompt, response) pairs, in order; batches are formed by length."""
    model.eval()
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        values = scores_of(model, pad_left([seqs[i] for i in idx], tokenizer.pad_token_id)).tolist()
        for i, v in zip(idx, values):
            out[i] = float(v)
    return out


class RewardScorer:
    """A trained reward model loaded for scoring; thread-safe (the server scores from a pool)."""

    def __init__(self, path: str | Path, max_length: int | None = None, batch_size: int = 64):
        from .models import load_reward_model

        self.path = Path(path)
        self.model, self.tokenizer = load_reward_model(self.path)
        stats_path = self.path / STATS
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        self.mean, self.std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0)) or 1.0
        self.max_length = max_length or int(stats.get("max_length", 512))
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Standardised scores: (raw - held-out mean) / held-out standard deviation."""
        with self._lock:
            raw = score_texts(self.model, self.tokenizer, prompts, responses, self.max_length, self.batch_size)
        return [(r - self.mean) / self.std for r in raw]
