"""Prompt log-probabilities of a checkpoint, as vLLM's completions API echoes them.

`python -m pai_distil_jobs.serve.scorer MODEL` answers one JSON request per line on stdin with one
JSON line on stdout; `pai-distil teacher serve --synthetic --logits-model DIR` (pai_distil.synthetic.
server) runs it as a child process, so the client side never imports torch or the jobs' code:

    {"op": "score", "prompt": TEXT or [ids], "k": TOP_K, "as_ids": BOOL} -> {"result": {"tokens", "token_logprobs", "top_logprobs", "text_offset"}}
    {"op": "tokenize", "text": TEXT}                                 -> {"result": [ids]}
    a request the model cannot answer                               -> {"error": MESSAGE}

Anything the libraries print goes to stderr; stdout carries the answers only.
"""

from __future__ import annotations

import json
import os
import sys

from pai_distil.core.protocol import BadRequest


class PromptScorer:
    """A checkpoint's log-probabilities of a prompt's tokens: per position its token's logprob and the
    top k (position 0: None). torch and the model load on the first request."""

    def __init__(self, model: str):
        self.spec, self.model, self.tokenizer = model, None, None

    def _load(self) -> None:
        if self.model is None:
            from pai_distil_jobs.models.models import load_model

            self.model, self.tokenizer = load_model(self.spec)
            self.model.eval()

    def tokenize(self, text: str) -> list[int]:
        self._load()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def score(self, prompt, k: int, as_ids: bool) -> dict:
        import torch

        self._load()
        ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if max(ids) >= self.model.config.vocab_size or min(ids) < 0:
            raise BadRequest(f"token ids must be below the vocabulary size {self.model.config.vocab_size}")
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
        name = (lambda i: f"token_id:{i}") if as_ids else self.tokenizer.convert_ids_to_tokens
        top = logp[:-1].topk(min(k, logp.shape[-1]), dim=-1)
        tokens = [name(i) for i in ids]
        token_lps = [None] + [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
        tops = [None] + [{name(int(i)): float(v) for i, v in zip(ti, tv)}
                         for ti, tv in zip(top.indices.tolist(), top.values.tolist())]
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": [0] * len(ids)}


def answer(scorer: PromptScorer, request: dict) -> dict:
    try:
        if request.get("op") == "tokenize":
            return {"result": scorer.tokenize(request["text"])}
        return {"result": scorer.score(request["prompt"], request["k"], request["as_ids"])}
    except BadRequest as e:
        return {"error": e.message}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pai_distil_jobs.serve.scorer MODEL", file=sys.stderr)
        return 2
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # what torch, transformers and friends print must not mix with the answers
    sys.stdout = sys.stderr
    scorer = PromptScorer(args[0])
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(answer(scorer, json.loads(line))) + "\n")
            replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
