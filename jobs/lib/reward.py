"""The scalar reward model: a causal LM with a one-output head, its Bradley-Terry training on the
shared trainer, and scoring in-process (GRPO, the reward server).

score(prompt, response) = head(last hidden state) + likelihood_weight * L(response | prompt)

L is the model's own log-likelihood of the response, by default per token (`likelihood="mean"`):
a sum over tokens pays for saying less, and a policy trained against it learns to answer with
nothing. The mean is neutral to length and still marks a wrong step. A small model cannot learn
to check arithmetic from a few thousand preference pairs through a head on the last token alone
(it learns the style of the teacher instead); through its language-model head it already knows
which steps are likely, and Bradley-Terry training sharpens that (with a language-model loss
that keeps it a model of good responses; see RewardTrainer). likelihood_weight 0 gives the
classic sequence-classifier reward model.

A checkpoint is the language model as Hugging Face saves it, `reward_head.safetensors` (the head,
with the likelihood weight and form in its metadata), and `reward_stats.json` (mean and standard
deviation of the scores on held-out candidates: scores are reported standardised with them, so a
weight in GRPO's reward means the same for every model).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from pai_distil.artifacts import REWARD_HEAD as HEAD
from pai_distil.specs import LIKELIHOOD, LIKELIHOOD_WEIGHT, Likelihood

from .legacy_loop import Trainer

STATS = "reward_stats.json"
LIKELIHOODS = get_args(Likelihood)


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of the conversation as the chat template writes it, and how many of the last ones
    are the response's; cut from the left when too long, so the answer at the end is always seen."""
    def ids_of(messages, **kw) -> list[int]:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    user = [{"role": "user", "content": prompt}]
    full = ids_of(user + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    head = ids_of(user, add_generation_prompt=True)
    shared = next((i for i, (a, b) in enumerate(zip(full, head)) if a != b), min(len(full), len(head)))
    ids = full[-max_length:]
    return ids, min(len(full) - shared, len(ids) - 1)


def pad_left(seqs: list[list[int]], pad: int) -> dict:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def batch_of(encoded: list[tuple[list[int], int]], pad: int) -> dict:
    """Left-padded ids and attention mask, and `response_mask`: the response tokens of each row."""
    batch = pad_left([ids for ids, _ in encoded], pad)
    resp = torch.zeros_like(batch["attention_mask"])
    for i, (_, n) in enumerate(encoded):
        if n > 0:
            resp[i, -n:] = 1
    batch["response_mask"] = resp
    return batch


class RewardModel(nn.Module):
    """A causal LM and a one-output head; see the module docstring for the score."""

    def __init__(self, lm, likelihood_weight: float = LIKELIHOOD_WEIGHT, likelihood: str = LIKELIHOOD):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        self.lm = lm
        self.likelihood_weight = float(likelihood_weight)
        self.likelihood = likelihood
        self.head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # at the start the score is the likelihood alone
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, response_mask) -> torch.Tensor:
        return self.score_and_likelihood(input_ids, attention_mask, response_mask)[0]

    def score_and_likelihood(self, input_ids, attention_mask, response_mask,
                             with_likelihood: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores, and the mean log-probability of each row's response tokens (zeros when the
        score has no likelihood term and `with_likelihood` does not ask for it)."""
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        score = self.head(hidden[:, -1])[:, 0]
        mean = torch.zeros_like(score)
        if self.likelihood_weight or with_likelihood:
            logp = self.lm.get_output_embeddings()(hidden[:, :-1]).float().log_softmax(-1)
            token_logp = logp.gather(2, input_ids[:, 1:, None])[..., 0]
            mask = response_mask[:, 1:].to(token_logp.dtype)
            total = (token_logp * mask).sum(1)
            mean = total / mask.sum(1).clamp(min=1)
            score = score + self.likelihood_weight * (mean if self.likelihood == "mean" else total)
        return score, mean

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.lm.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD),
                  metadata={"likelihood_weight": str(self.likelihood_weight), "likelihood": self.likelihood})

    def load_head(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(str(path)))

    def load_weights(self, path: str | Path) -> None:
        """Load a checkpoint directory written by `save_pretrained` into this model (resume)."""
        from safetensors.torch import load_file

        self.lm.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=False)
        self.load_head(Path(path) / HEAD)


class RewardTrainer(Trainer):
    """Pairwise Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected), plus an optional squared
    error pulling each score toward its judge score, plus the language-model loss on the chosen
    responses. Examples: {"chosen", "rejected"} as `encode` returns them, and their judge scores.

    Why the language-model loss: Bradley-Terry only asks that chosen score above rejected, and left
    alone it moves the likelihood anywhere that serves that, e.g. runs of blank lines become likely.
    A policy trained against the score then finds those. Keeping the model a model of good
    responses keeps text it would never write unlikely."""

    def __init__(self, *args, regression_weight: float = 0.0, lm_weight: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.regression_weight = regression_weight
        self.lm_weight = lm_weight

    def make_batch(self, examples: list[dict]) -> dict:
        batch = batch_of([e["chosen"] for e in examples] + [e["rejected"] for e in examples],
                         self.tokenizer.pad_token_id)
        batch["targets"] = torch.tensor([e["chosen_score"] for e in examples] + [e["rejected_score"] for e in examples])
        return batch

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        r, mean_logp = self.model.score_and_likelihood(batch["input_ids"], batch["attention_mask"],
                                                       batch["response_mask"], with_likelihood=bool(self.lm_weight))
        n = r.shape[0] // 2
        margin = r[:n] - r[n:]
        loss = -F.logsigmoid(margin).mean()
        if self.regression_weight:
            loss = loss + self.regression_weight * F.mse_loss(r, batch["targets"].to(r.dtype))
        metrics = {"pair_accuracy": round((margin > 0).float().mean().item(), 4)}
        if self.lm_weight:
            nll = -mean_logp[:n].mean()
            loss = loss + self.lm_weight * nll
            metrics["chosen_nll"] = round(nll.item(), 4)
        return loss, metrics


@torch.inference_mode()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
                batch_size: int = 64) -> list[float]:
    """Raw scores of (prompt, response) pairs, in order; batches are formed by length."""
    model.eval()
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = batch_of([seqs[i] for i in idx], tokenizer.pad_token_id)
        values = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"]).tolist()
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
