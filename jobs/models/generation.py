"""Batched decoding through the chat template (greedy by default)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from pai_distil_jobs.models.chat_template import OPENED_THINK
from pai_distil_jobs.models.models import end_tokens


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
             enable_thinking: bool | None = None, temperature: float = 0.0, top_p: float = 1.0,
             on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """Completions for user `prompts`: [{"text", "tokens", "truncated", "ids"}] in prompt order.

    Prompts are processed in length order so batches pad little; `tokens` counts generated
    tokens up to and including the first end token (eos or the template's end of turn); `text`
    starts with the `<think>` a generation prompt opened, so verifiers see the whole thought.
    """
    model.eval()
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True, **kwargs) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    results: list[dict | None] = [None] * len(prompts)
    stops = end_tokens(tokenizer, model)  # eos and the template's end of turn: a base model's eos is not <|im_end|>
    stop_texts = [tokenizer.convert_ids_to_tokens(i) for i in stops]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        sample = temperature > 0
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=top_p if sample else None,
                             top_k=None, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for row, i in zip(new.tolist(), idx):
            end = next((k for k, t in enumerate(row) if t in stops), None)
            n = len(row) if end is None else end + 1
            text = tokenizer.decode(row[:n], skip_special_tokens=False)
            for s in stop_texts:
                text = text.replace(s, "")
            opened = OPENED_THINK.search(rendered[i])  # R1-Distill's prompt opens the thought: the reply is inside it
            text = rendered[i][opened.start():] + text if opened else text
            results[i] = {"text": text, "tokens": n, "truncated": end is None, "ids": row[:n]}
        if on_batch:
            on_batch(len(idx))
    return results  # type: ignore[return-value]


def require_vllm(asked: str, instead: str) -> None:
    """One line, before anything loads, when vLLM rollouts (`asked`) meet a job image without vLLM (the CPU one)."""
    if importlib.util.find_spec("vllm") is None:
        from pai_distil.core.contract import JobError

        raise JobError(f"{asked} needs vLLM, which this job image lacks; use the GPU image "
                       f"(REGISTRY/pai-distil-gpu:TAG), or set {instead}")
