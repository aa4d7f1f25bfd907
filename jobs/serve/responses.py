"""The bodies of OpenAI's two completion APIs, whole and streamed, from the engine's events.

Why one event loop for both APIs: chat and text completions differ only in how a choice's text
and logprobs are written (a message with `reasoning_content` and `logprobs.content`, or `text`
with the legacy token lists), so a `ChatFormat` or `TextFormat` writes the choices and
`collect` / `stream` do the rest: n choices per prompt, finish reasons, usage, `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid

from pai_distil.core.protocol import ThinkSplitter, error_body, split_reasoning

from pai_distil_jobs.serve.logprobs import completion_logprobs


class ChatFormat:
    """`chat.completion` choices: the thought split into `reasoning_content` as vLLM's reasoning parser does."""

    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def __init__(self, n: int, in_thought: bool, reasoning_parser: bool, logprobs: bool):
        self.in_thought, self.parser, self.logprobs = in_thought, reasoning_parser, logprobs
        self.splitters = [ThinkSplitter(in_thought) if reasoning_parser else None for _ in range(n)]

    def opening(self, i: int) -> dict:
        return {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}

    def pieces(self, i: int, text: str | None) -> list[dict]:
        """Stream choices for new text of choice i (None: the end, flush what was held back)."""
        s = self.splitters[i]
        parts = ([("content", text)] if text else []) if s is None else (s.feed(text) if text is not None else s.flush())
        return [{"index": i, "delta": {f: t}, "finish_reason": None, "logprobs": None} for f, t in parts]

    def finish(self, i: int, reason: str) -> dict:
        return {"index": i, "delta": {}, "finish_reason": reason, "logprobs": None}

    def attach(self, choice: dict, entries: list[dict], offset: int = 0) -> dict:
        choice["logprobs"] = {"content": entries, "refusal": None} if self.logprobs else None
        return choice

    def whole(self, i: int, text: str, reason: str, entries: list[dict]) -> dict:
        if self.parser:
            reasoning, answer = split_reasoning(text, self.in_thought)
        else:
            reasoning, answer = None, text
        message = {"role": "assistant", "content": answer}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return self.attach({"index": i, "message": message, "finish_reason": reason}, entries)


class TextFormat:
    """`text_completion` choices: the raw text, logprobs as tokens, token_logprobs, top_logprobs, text_offset."""

    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs

    def opening(self, i: int) -> None:
        return None

    def pieces(self, i: int, text: str | None) -> list[dict]:
        return [{"index": i, "text": text, "finish_reason": None, "logprobs": None}] if text else []

    def finish(self, i: int, reason: str) -> dict:
        return {"index": i, "text": "", "finish_reason": reason, "logprobs": None}

    def attach(self, choice: dict, entries: list[dict], offset: int = 0) -> dict:
        choice["logprobs"] = completion_logprobs(entries, offset) if self.logprobs else None
        return choice

    def whole(self, i: int, text: str, reason: str, entries: list[dict]) -> dict:
        return self.attach({"index": i, "text": text, "finish_reason": reason}, entries)


class Reply:
    """One request's answer: its id, time, model and fingerprint, and the choices' format."""

    def __init__(self, fmt, model: str, fingerprint: str, prompt_tokens: int):
        self.fmt, self.model, self.fingerprint, self.prompt_tokens = fmt, model, fingerprint, prompt_tokens
        self.id, self.created = fmt.id_prefix + uuid.uuid4().hex[:24], int(time.time())

    def body(self, choices: list[dict], completion_tokens: int) -> dict:
        return {**self._head(self.fmt.object), "choices": choices, "usage": self.usage(completion_tokens)}

    def chunk(self, choices: list[dict], **extra) -> str:
        body = {**self._head(self.fmt.chunk_object), "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}


async def events(jobs, queue):
    """The choices' events until each is done (or one failed); a consumer that stops early (a client
    gone) marks them cancelled, so they stop counting in their batch."""
    left = len(jobs)
    try:
        while left:
            event = await queue.get()
            left -= event[1] == "done"
            yield event
            if event[1] == "error":
                return
    finally:
        for job in jobs:
            job.cancelled = True


async def collect(jobs, queue, reply: Reply) -> dict | str:
    """The whole body, or the error message of a failed generation."""
    texts, done = [""] * len(jobs), {}
    async for event in events(jobs, queue):
        i, kind = event[0], event[1]
        if kind == "error":
            return event[2]
        if kind == "text":
            texts[i] += event[2]
        else:
            done[i] = event
    choices = [reply.fmt.whole(i, texts[i], done[i][2], job.logprobs) for i, job in enumerate(jobs)]
    return reply.body(choices, sum(e[4] for e in done.values()))


async def stream(jobs, queue, reply: Reply, include_usage: bool):
    """Server-sent chunks: openings, then per piece of text its choice (carrying the logprobs of the
    tokens since the last one), then each finish, the usage when asked, and `[DONE]`."""
    fmt = reply.fmt
    sent, shown, out_tokens = [0] * len(jobs), [0] * len(jobs), 0
    openings = [c for c in (fmt.opening(i) for i in range(len(jobs))) if c]
    if openings:
        yield reply.chunk(openings)
    async for event in events(jobs, queue):
        i, kind = event[0], event[1]
        if kind == "error":
            yield f"data: {json.dumps(error_body(event[2], 'server_error'))}\n\n"
            return
        upto = event[3] if kind == "text" else len(jobs[i].logprobs)
        choices = fmt.pieces(i, event[2] if kind == "text" else None)
        if choices:  # the logprobs ride with the first piece; held-back text keeps them for later
            fmt.attach(choices[0], jobs[i].logprobs[sent[i]:upto], shown[i])
            sent[i] = upto
            shown[i] += sum(len(c.get("text", "")) for c in choices)
        for c in choices:
            yield reply.chunk([c])
        if kind == "done":
            out_tokens += event[4]
            yield reply.chunk([fmt.finish(i, event[2]) if sent[i] == upto else
                               fmt.attach(fmt.finish(i, event[2]), jobs[i].logprobs[sent[i]:upto], shown[i])])
    if include_usage:
        yield reply.chunk([], usage=reply.usage(out_tokens))
    yield "data: [DONE]\n\n"
