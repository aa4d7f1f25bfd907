"""Batched generation for the OpenAI-compatible server of `pai-distil deploy local`.

One worker thread owns the model. Requests that wait while a batch runs are decoded together
in the next one (same sampling settings, up to `max_batch`), so concurrent clients share the
CPU instead of queueing one by one. Tokens reach each request as they are produced (a
streamer over the whole batch), so streaming and non-streaming requests take the same path;
a request whose client went away stops counting, and a batch whose requests are all done or
gone stops decoding. Stop strings are matched on the decoded text, per request (text that
could begin one is held back until it is decided), so requests with different `stop` share a
batch; a sampled request with a `seed` is decoded in a batch of its own choices only, after
seeding torch, so the same request gives the same answers.
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

from pai_distil.core.protocol import BadRequest, Sampling, partial_suffix
from pai_distil.core.think import SOFT_NO_THINK, THINK_CLOSE, THINK_OPEN

from pai_distil_jobs.models.chat_template import switch_thinking_off, thinking_switch
from pai_distil_jobs.models.models import end_tokens, load_for_inference
from pai_distil_jobs.serve.logprobs import LogprobRecorder, TokenNames


@dataclass
class Job:
    """One choice of a request on its way through the worker; events `(index, kind, ...)` go to
    `events` (shared by the request's choices) on the server's loop:
    ("text", piece, logprob entries so far), ("done", finish_reason, prompt tokens, completion tokens),
    ("error", message)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    index: int = 0
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; else the alternatives per token
    seed: int | None = None
    request: int = 0  # the choices of one request share it: a seeded batch holds one request
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    cancelled: bool = False

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, *event))

    @property
    def sampling(self) -> tuple:
        if self.temperature <= 0:
            return (False,)
        return (True, self.temperature, self.top_p) + (() if self.seed is None else (self.seed, self.request))


class _BatchStreamer(BaseStreamer):
    """Hands each row's new token to its job; the first call is the prompt and is skipped."""

    def __init__(self, engine: Engine, jobs: list[Job], scores: LogprobRecorder):
        self.engine, self.jobs, self.scores, self.prompt_seen = engine, jobs, scores, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, (job, tok) in enumerate(zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist(),
                                             strict=True)):
            if job.done:
                continue
            if tok in self.engine.stop_ids:
                self.engine.finish(job, "stop", counted=tok)
                continue
            job.tokens.append(tok)
            if job.top_logprobs is not None:
                job.logprobs.append(self.scores.entry(self.engine.names, row, tok, job.top_logprobs))
            if self.engine.push_text(job):
                self.engine.finish(job, "stop")
            elif len(job.tokens) >= job.max_tokens:
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
        self.names = TokenNames(tok)
        self.thinking_switch = thinking_switch(tok, checkpoint)
        self.max_batch = max_batch
        self._requests = 0
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

    def switch_thinking(self, messages: list[dict], template_kwargs: dict) -> tuple[list[dict], dict, str | None]:
        """(messages, template kwargs, the soft switch applied or None) for a request's `enable_thinking`.

        False where the template ignores it: `/no_think` in the last user turn when the checkpoint was
        trained to read it, else a 400 (answering with thinking on would pass for thinking off)."""
        if template_kwargs.get("enable_thinking") is not False or self.thinking_switch == "template":
            return messages, template_kwargs, None
        if self.thinking_switch == "soft":
            return switch_thinking_off(messages), template_kwargs, SOFT_NO_THINK.strip()
        raise BadRequest("'enable_thinking': false cannot be honoured: this checkpoint's chat template renders the "
                         "same prompt with enable_thinking true and false (it has no thinking switch) and it was "
                         "not trained with /no_think; remove enable_thinking", "enable_thinking")

    def default_budget(self, prompt_len: int) -> int:
        return max(1, (self.context or prompt_len + 2048) - prompt_len)

    def check_budget(self, prompt_len: int, max_tokens: int) -> None:
        if self.context and prompt_len + max_tokens > self.context:
            raise BadRequest(f"this model's context is {self.context} tokens; the prompt has {prompt_len} and "
                             f"max_tokens asks for {max_tokens}; lower max_tokens or shorten the messages", "max_tokens")

    def encode(self, prompt: str) -> list[int]:
        """A completions prompt's token ids, as vLLM tokenizes it (the tokenizer's own special tokens added)."""
        return self.tokenizer(prompt)["input_ids"]

    def start(self, prompts: list[list[int]], budgets: list[int], s: Sampling,
              top_logprobs: int | None) -> tuple[list[Job], asyncio.Queue]:
        """Queue `s.n` choices of each prompt (choice `p * n + j` is prompt p's j-th); their events share the
        returned queue."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        self._requests += 1
        jobs = [Job(ids, budget, s.temperature, s.top_p, loop, events, index=p * s.n + j, stop=s.stop,
                    top_logprobs=top_logprobs, seed=s.seed, request=self._requests)
                for p, (ids, budget) in enumerate(zip(prompts, budgets, strict=True)) for j in range(s.n)]
        for job in jobs:
            self._queue.put(job)
        return jobs, events

    # -- worker side --------------------------------------------------------------------------------

    def push_text(self, job: Job, final: bool = False) -> bool:
        """Send the job's new text; True when it reached one of its stop strings (the text is cut before it)."""
        shown, stopped = self._visible(job, final)
        if shown.startswith(job.sent) and len(shown) > len(job.sent):
            job.emit("text", shown[len(job.sent):], len(job.logprobs))
            job.sent = shown
        return stopped

    def _visible(self, job: Job, final: bool) -> tuple[str, bool]:
        """(the text that may be sent, whether a stop string ended it)."""
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=False)
        for s in self.strip:
            text = text.replace(s, "")
        hits = [at for at in (text.find(s) for s in job.stop) if at >= 0]
        if hits:
            return text[:min(hits)], True
        if final:
            return text, False
        text = text.rstrip("\ufffd")  # half of a multi-byte character: wait for the rest
        held = max((partial_suffix(text, s) for s in job.stop), default=0)  # may begin a stop string
        return text[:len(text) - held], False

    def finish(self, job: Job, reason: str, counted: int | None = None) -> None:
        if reason != "stop" or counted is not None:
            reason = "stop" if self.push_text(job, final=True) else reason  # the text held back for stop strings
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
        if sample and first.seed is not None:
            torch.manual_seed((first.seed + first.index) % 2**64)  # a request split over batches: each its own samples
        scores = LogprobRecorder([j.top_logprobs is not None for j in batch])
        self.model.generate(
            input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device), max_new_tokens=max(j.max_tokens for j in batch),
            do_sample=sample, temperature=first.temperature if sample else None,
            top_p=first.top_p if sample else None, top_k=None, eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id, streamer=_BatchStreamer(self, batch, scores), logits_processor=[scores],
            stopping_criteria=StoppingCriteriaList([_AllDone(batch)]))

