"""Batched generation for the OpenAI-compatible server of `pai-distil deploy local`.

One worker thread owns the model. Requests that wait while a batch runs are decoded together
in the next one (same sampling settings, up to `max_batch`), so concurrent clients share the
CPU instead of queueing one by one. Tokens reach each request as they are produced (a
streamer over the whole batch), so streaming and non-streaming requests take the same path;
a request whose client went away stops counting, and a batch whose requests are all done or
gone stops decoding.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from pai_distil.core.protocol import BadRequest
from pai_distil.core.think import THINK_CLOSE, THINK_OPEN

from pai_distil_jobs.models.models import end_tokens, load_for_inference


@dataclass
class Job:
    """One chat request on its way through the worker; events go to `events` on the server's loop."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    cancelled: bool = False

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def sampling(self) -> tuple:
        return (self.temperature > 0, self.temperature, self.top_p) if self.temperature > 0 else (False,)


class _BatchStreamer(BaseStreamer):
    """Hands each row's new token to its job; the first call is the prompt and is skipped."""

    def __init__(self, engine: Engine, jobs: list[Job]):
        self.engine, self.jobs, self.prompt_seen = engine, jobs, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for job, tok in zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist(), strict=True):
            if job.done:
                continue
            if tok in self.engine.stop_ids:
                self.engine.finish(job, "stop", counted=tok)
                continue
            job.tokens.append(tok)
            self.engine.push_text(job)
            if len(job.tokens) >= job.max_tokens:
                self.engine.finish(job, "length")

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:
                self.engine.finish(job, "length")


class _AllDone(StoppingCriteria):
    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        stop = all(j.done or j.cancelled for j in self.jobs)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)


class Engine:
    """A checkpoint behind a request queue, decoded by one thread in batches."""

    def __init__(self, checkpoint: str, max_batch: int = 8, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer = load_for_inference(checkpoint)
        self.model.eval()
        tok = self.tokenizer
        # eos, the template's end of turn (a base model's eos is <|endoftext|>, its turns end with <|im_end|>),
        # generation_config's eos ids, and <|endoftext|>, which ends a document whatever the template
        endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
        self.stop_ids = set(end_tokens(tok, self.model)) | ({endoftext} if isinstance(endoftext, int) and endoftext != tok.unk_token_id else set())
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.strip = [t for t in {tok.pad_token, *tok.convert_ids_to_tokens(sorted(self.stop_ids))} if t]
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.max_batch = max_batch
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: deque[Job] = deque()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    # -- request side (server's event loop) -------------------------------------------------------

    def render(self, messages: list[dict], template_kwargs: dict) -> tuple[list[int], bool]:
        """Prompt token ids through the chat template, and whether the prompt opened a think block."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **template_kwargs)
        except Exception as e:  # noqa: BLE001 - the template's own complaint is the message (jinja raises many kinds)
            raise BadRequest(f"the chat template rejected the messages: {e}", "messages") from None
        tail = text[text.rfind("<|im_start|>"):] if "<|im_start|>" in text else text[-64:]
        in_thought = tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], in_thought

    def default_budget(self, prompt_len: int) -> int:
        return max(1, (self.context or prompt_len + 2048) - prompt_len)

    def check_budget(self, prompt_len: int, max_tokens: int) -> None:
        if self.context and prompt_len + max_tokens > self.context:
            raise BadRequest(f"this model's context is {self.context} tokens; the prompt has {prompt_len} and "
                             f"max_tokens asks for {max_tokens}; lower max_tokens or shorten the messages", "max_tokens")

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    # -- worker side --------------------------------------------------------------------------------

    def push_text(self, job: Job) -> None:
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=False)
        for s in self.strip:
            text = text.replace(s, "")
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if text.startswith(job.sent) and len(text) > len(job.sent):
            job.emit("text", text[len(job.sent):])
            job.sent = text

    def finish(self, job: Job, reason: str, counted: int | None = None) -> None:
        job.done = True
        if counted is not None:
            job.tokens.append(counted)  # the end-of-turn token counts as generated, as in vLLM's usage
        job.emit("done", reason, len(job.prompt_ids), len(job.tokens))

    def _next_batch(self) -> list[Job]:
        first = self._held.popleft() if self._held else self._queue.get()
        batch, keep = [first], deque()
        while True:
            try:
                job = self._held.popleft() if self._held else self._queue.get_nowait()
            except (IndexError, queue.Empty):
                break
            (batch if job.sampling == first.sampling and len(batch) < self.max_batch else keep).append(job)
        self._held = keep
        return [j for j in batch if not j.cancelled]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._decode(batch)
            except Exception as e:  # noqa: BLE001 - one failed batch answers 500; the server keeps serving
                for job in batch:
                    if not job.done:
                        job.done = True
                        job.emit("error", f"generation failed: {type(e).__name__}: {e}")

    @torch.inference_mode()
    def _decode(self, batch: list[Job]) -> None:
        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids):] = 1
        first = batch[0]
        sample = first.temperature > 0
        self.model.generate(
            input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device), max_new_tokens=max(j.max_tokens for j in batch),
            do_sample=sample, temperature=first.temperature if sample else None,
            top_p=first.top_p if sample else None, top_k=None, eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id, streamer=_BatchStreamer(self, batch),
            stopping_criteria=StoppingCriteriaList([_AllDone(batch)]))
