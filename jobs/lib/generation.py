"""Batched decoding through the chat template (greedy by default)."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
             enable_thinking: bool | None = None, temperature: float = 0.0, top_p: float = 1.0,
             on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """Completions for user `prompts`: [{"text", "tokens", "truncated", "ids"}] in prompt order.

    Prompts are processed in length order so batches pad little; `tokens` counts generated
    tokens up to and including the end-of-turn token.
    """
    model.eval()
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True, **kwargs) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    results: list[dict | None] = [None] * len(prompts)
    eos = tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        sample = temperature > 0
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=top_p if sample else None,
                             top_k=None, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for row, i in zip(new.tolist(), idx):
            n = row.index(eos) + 1 if eos in row else len(row)
            text = tokenizer.decode(row[:n], skip_special_tokens=False).replace(tokenizer.eos_token, "")
            results[i] = {"text": text, "tokens": n, "truncated": eos not in row, "ids": row[:n]}
        if on_batch:
            on_batch(len(idx))
    return results  # type: ignore[return-value]
