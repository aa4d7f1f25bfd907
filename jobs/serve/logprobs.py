"""Log-probabilities of generated tokens, in the shapes of OpenAI's two APIs.

Why a logits processor rather than generate's `output_scores`: those come back when the whole
batch is done, and a streamed reply sends each token's logprob with its text. The processor
runs before sampling, so it sees the model's distribution (after the checkpoint's own
processors, before temperature and top_p), as vLLM's default `raw_logprobs` does.
"""

from __future__ import annotations

import functools

import torch
from transformers import LogitsProcessor


class LogprobRecorder(LogitsProcessor):
    """Keeps the last step's log-softmax of the rows whose request asked for logprobs."""

    def __init__(self, wanted: list[bool]):
        self.wanted, self.last = wanted, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores.float(), dim=-1) if any(self.wanted) else None
        return scores

    def entry(self, names: TokenNames, row: int, token: int, top: int) -> dict:
        """OpenAI's chat logprob entry of `token` in `row`: token, logprob, bytes and the `top` likeliest."""
        lp = self.last[row]
        alternatives = []
        if top:
            values, ids = lp.topk(top)
            alternatives = [names.entry(i, v) for i, v in zip(ids.tolist(), values.tolist())]
        return {**names.entry(token, float(lp[token])), "top_logprobs": alternatives}


class TokenNames:
    """A token's text and its exact UTF-8 bytes (a token may hold part of a character, whose text alone
    is U+FFFD), read through the byte-level alphabet of Qwen's tokenizers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.byte_of = {c: b for b, c in _byte_alphabet().items()}

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one instance per server, living as long as it
    def name(self, token: int) -> tuple[str, list[int]]:
        if token in self.special:
            text = self.special[token]
            return text, list(text.encode())
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is not None and all(c in self.byte_of for c in piece):
            raw = bytes(self.byte_of[c] for c in piece)
        else:  # not a byte-level vocabulary: the decoded text is all there is
            raw = self.tokenizer.decode([token]).encode()
        return raw.decode("utf-8", errors="replace"), list(raw)

    def entry(self, token: int, logprob: float) -> dict:
        text, raw = self.name(token)
        return {"token": text, "logprob": logprob, "bytes": raw}


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters, which byte-level BPE vocabularies use."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {b: chr(b) for b in visible}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def completion_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """The completions API's logprobs of chat-shaped `entries`: tokens, their logprobs, the top
    alternatives and the chosen token as {token: logprob}, and each token's offset in the text."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{**{t["token"]: t["logprob"] for t in e["top_logprobs"]}, e["token"]: e["logprob"]}
                             for e in entries],
            "text_offset": offsets}
