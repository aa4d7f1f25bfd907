"""Turning SFT rows (OpenAI `messages`) into token ids with loss on assistant tokens only."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int,
                    template_kwargs: dict | None = None) -> dict | None:
    """input_ids and labels of one conversation; labels mask everything but the last assistant turn.

    The prompt is rendered with the chat template's generation prompt, so the tokens the model
    learns to produce are exactly those it will be asked to produce at inference time.
    Returns None when the prompt alone does not fit in `max_length`.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    kwargs = template_kwargs or {}
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, **kwargs)
    full = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside the conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        return None
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training (labels padded with IGNORE)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def encode_rows(tokenizer, rows: list[dict], max_length: int, max_truncated: float = 0.05, log=print) -> list[dict]:
    """Every row encoded (placeholder until the truncation report lands)."""
    from ..contract import JobError

    out = [e for r in rows if (e := encode_messages(tokenizer, r["messages"], max_length, r.get("chat_template_kwargs")))]
    if not out:
        raise JobError(f"every training row is longer than train.max_length={max_length}; raise it")
    return out
