"""Sampling a served model (any OpenAI-compatible endpoint) for evaluation, through the stages' worker pool.

Returns the same records as local decoding ({"text", "tokens", "truncated"}), so a served model
and a checkpoint go through the same verification and report. Reasoning returned in
`reasoning_content` is put back inline as `<think>…</think>`, so the answer is read from the
same place for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai

from pai_distil.core.config import Endpoint

from pai_distil.core.contract import JobError
from pai_distil.core.think import think_block
from pai_distil_jobs.endpoints.resumable import NotACompletion, ask_in_order, explain_failure, message_of


def _record(resp) -> dict:
    choice, message, usage = message_of(resp)
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    text = think_block(reasoning.strip(), content.strip()) if reasoning else content
    tokens = usage.get("completion_tokens")
    if not isinstance(tokens, int):
        tokens = len(text.split())  # no usage: words, a rough stand-in
    return {"text": text, "tokens": tokens, "truncated": choice.get("finish_reason") == "length"}


async def _sample_all(endpoint: Endpoint, name: str, prompts: list[str], *, max_tokens: int, temperature: float,
                      top_p: float, seed: int, enable_thinking: bool | None,
                      on_done: Callable[[int], None] | None) -> list[dict]:
    extra = {} if enable_thinking is None else {"chat_template_kwargs": {"enable_thinking": enable_thinking}}

    async def ask(c: openai.AsyncOpenAI, item: tuple[int, str]) -> dict:
        i, prompt = item
        try:
            resp = await c.chat.completions.create(
                model=endpoint.model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, seed=seed + i, extra_body=extra or None)
            return _record(resp)
        except (openai.OpenAIError, NotACompletion, ValueError) as e:
            raise JobError(f"model '{name}': {explain_failure(e, endpoint, role='endpoint')}") from None

    # Nothing to resume (the answers are judged in memory), evaluate logs progress.
    return await ask_in_order(list(enumerate(prompts)), ask, endpoint, on_done=(lambda: on_done(1)) if on_done else None)


def sample(endpoint: Endpoint, name: str, prompts: list[str], **kw) -> list[dict]:
    """One completion per prompt, in prompt order: [{"text", "tokens", "truncated"}]."""
    return asyncio.run(_sample_all(endpoint, name, prompts, **kw))
