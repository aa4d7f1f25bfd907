"""Asking an OpenAI-compatible judge one rubric question about a CoT sample (score, reward-model)."""

from __future__ import annotations

import openai

from pai_distil.core.judging import SCALES, judge_prompt, parse_score
from pai_distil.core.config import Teacher

from pai_distil.core.contract import JobError
from pai_distil_jobs.endpoints.resumable import NotACompletion, explain_failure, message_of


async def ask(c: openai.AsyncOpenAI, judge: Teacher, row: dict, dimension: str) -> tuple[int | None, str]:
    """(score or None when unreadable, the judge's text) for one dimension of `row`."""
    messages = judge_prompt(dimension, row["problem"], str(row.get("answer", "")), row["thought"], row["solution"])
    try:
        resp = await c.chat.completions.create(model=judge.model, messages=messages, max_tokens=judge.max_tokens,
                                               temperature=judge.temperature)
        _, message, _ = message_of(resp)
    except (openai.OpenAIError, NotACompletion, ValueError) as e:
        raise JobError(explain_failure(e, judge, role="judge")) from None
    text = message.get("content") or ""
    return parse_score(text, *SCALES[dimension]), text
