"""The teacher's token distributions: top-k ids and log-probabilities at the trained tokens of SFT rows.

Two teachers give the same thing. A checkpoint run in the job: its last hidden states are turned
into logits a chunk of positions at a time, so a 151 k vocabulary over 8 k-token chains never
exists as one [batch, length, vocab] fp32 tensor. A served model: vLLM's completions API with
`echo`, `logprobs: k` and `return_tokens_as_token_ids`, sent the row's token ids, so the teacher
scores exactly the tokens the student trains on.

On disk (`TopKStore`) a shard is one safetensors file of a range of rows: `ids` (uint16 when the
vocabulary fits, else int32) and `logprobs` (float16), [tokens, k] each, `targets` (the trained
token at each position, to check the training stage tokenized the row the same way) and
`offsets`; its metadata holds each row's key. At k = 20 that is 1.03x the top-k ids as int32
with a small vocabulary, 1.56x with Qwen's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pai_distil.core.contract import JobError, log
from pai_distil.core.url_credentials import unmasked
from pai_distil_jobs.train.sft_data import IGNORE

SHARD_GLOB = "shard-*.safetensors"


def row_key(row: dict) -> str:
    """A row's identity across stages: its messages and template flags (order and filters may differ)."""
    text = json.dumps([row["messages"], row.get("chat_template_kwargs") or {}], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def keyed_examples(tokenizer, rows: list[dict], max_length: int, max_truncated: float, log=log):
    """Encoded rows (`sft_data.encode_rows`) and their keys; rows whose prompt alone exceeds max_length
    are dropped there, and here too. Its report names the training stage's fields (`train.max_length`);
    here they are top-level fields of the config, and named so."""
    from pai_distil_jobs.train.sft_data import encode_messages, encode_rows

    try:
        examples = encode_rows(tokenizer, rows, max_length, max_truncated, log=lambda m: log(_top_level(m)))
    except JobError as e:
        raise JobError(_top_level(str(e))) from None
    if len(examples) == len(rows):
        return examples, [row_key(r) for r in rows]
    kept = [r for r in rows if encode_messages(tokenizer, r["messages"], max_length, r.get("chat_template_kwargs"))]
    return examples, [row_key(r) for r in kept]


def _top_level(text: str) -> str:
    return text.replace("train.max_length", "max_length").replace("train.max_truncated", "max_truncated")


def trained_positions(labels: list[int]) -> list[int]:
    return [i for i, t in enumerate(labels) if t != IGNORE]


# -- tokenizers --------------------------------------------------------------------------------------


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]


def check_same_tokenizer(teacher_tok, student_tok, teacher: str, student: str) -> None:
    """One line when the teacher's token ids would mean other tokens to the student."""
    if tokenizer_digest(teacher_tok) != tokenizer_digest(student_tok):
        raise JobError(f"teacher {teacher!r} has another tokenizer than student {student!r} ({len(teacher_tok)} vs "
                       f"{len(student_tok)} tokens): its token distributions mean nothing to the student; use a "
                       "teacher of the student's family (same tokenizer), or distil black-box from its samples")


# -- a teacher checkpoint in the job -----------------------------------------------------------------


def topk_at(model, input_ids, attention_mask, labels, k: int):
    """(ids [B, T, k] long, logprobs [B, T, k] float32): at every position t with labels[:, t] != IGNORE,
    the teacher's k most likely tokens for position t (from the logits at t - 1); elsewhere -inf."""
    import torch

    from pai_distil_jobs.train.lm_head_chunks import chunk_positions

    hidden = _last_hidden(model, input_ids, attention_mask)  # [B, T, H]
    head = model.get_output_embeddings()
    B, T = input_ids.shape
    ids = torch.zeros((B, T, k), dtype=torch.long, device=input_ids.device)
    lps = torch.full((B, T, k), float("-inf"), dtype=torch.float32, device=input_ids.device)
    b, t = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    step = chunk_positions(model.config.get_text_config().vocab_size)  # a ZeRO-3 / FSDP head holds a shard
    for s in range(0, len(b), step):
        bb, tt = b[s:s + step], t[s:s + step]
        logp = torch.log_softmax(head(hidden[bb, tt]).float(), dim=-1)
        top = logp.topk(k, dim=-1)
        ids[bb, tt + 1], lps[bb, tt + 1] = top.indices, top.values
    return ids, lps


def _last_hidden(model, input_ids, attention_mask):
    decoder = model.get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


class LocalTeacher:
    """A teacher checkpoint scoring batches of examples: on this process's device (bf16 on GPUs), or as
    `load(spec, seed)` places it (a training run's `sharded_load.load_frozen`)."""

    def __init__(self, spec: str, seed: int = 0, batch_size: int = 8, load=None):
        from pai_distil_jobs.models.models import load_for_inference

        self.model, self.tokenizer = (load or load_for_inference)(spec, seed=seed)
        self.name, self.batch_size = spec, batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)

    def topk(self, input_ids, attention_mask, labels, k: int):
        import torch

        with torch.inference_mode():
            ids, lps = topk_at(self.model, input_ids.to(self.model.device), attention_mask.to(self.model.device),
                               labels.to(self.model.device), k)
        return ids.to(input_ids.device).clone(), lps.to(input_ids.device).clone()

    def score(self, examples: list[dict], k: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per example, (ids [n, k], logprobs [n, k]) at its trained positions, in order."""
        from pai_distil_jobs.train.sft_data import collate

        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        found: dict[int, tuple] = {}
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            batch = collate([examples[i] for i in idx], pad_id)
            ids, lps = self.topk(batch["input_ids"], batch["attention_mask"], batch["labels"], k)
            for row, i in enumerate(idx):
                pos = trained_positions(examples[i]["labels"])
                found[i] = (ids[row, pos].cpu().numpy(), lps[row, pos].cpu().numpy())
        return [found[i] for i in range(len(examples))]


# -- a served teacher --------------------------------------------------------------------------------


class EndpointTeacher:
    """A served teacher asked for prompt logprobs: vLLM's completions API, echo + logprobs, token ids in."""

    def __init__(self, endpoint, tokenizer):
        self.endpoint, self.tokenizer = endpoint, tokenizer
        self.url = endpoint.base_url

    def _no_logprobs(self, why: str) -> JobError:
        return JobError(f"teacher at {self.url} returned no prompt logprobs ({why}); serve it with vLLM (its "
                        "completions API echoes prompt logprobs; start it with --max-logprobs >= top_k) or "
                        "`pai-distil teacher serve --synthetic --logits-model DIR`, or fix teacher.endpoint.base_url")

    def check_tokenizer(self, text: str) -> None:
        """Ask the server to tokenize `text` (vLLM's POST /tokenize): other ids than the student's are one
        line. A server without /tokenize is trusted, and said so in the log."""
        import httpx

        url = unmasked(self.url).removesuffix("/v1") + "/tokenize"
        key = os.environ.get(self.endpoint.api_key_env) if self.endpoint.api_key_env else None
        try:
            resp = httpx.post(url, json={"model": self.endpoint.model, "prompt": text, "add_special_tokens": False},
                              headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=self.endpoint.timeout_s)
            theirs = resp.json().get("tokens") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):  # any failure: the check is best effort
            theirs = None
        if theirs is None:
            log(f"teacher at {self.url} has no /tokenize: its tokenizer is not checked against the student's")
            return
        if list(theirs) != self.tokenizer(text, add_special_tokens=False)["input_ids"]:
            raise JobError(f"teacher at {self.url} has another tokenizer than the student (its /tokenize gives other "
                           "ids): its token distributions mean nothing to the student; use a teacher of the "
                           "student's family (same tokenizer), or distil black-box from its samples")

    async def _one(self, client, example: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
        import openai

        from pai_distil_jobs.endpoints.resumable import explain_failure

        ids = [int(i) for i in example["input_ids"]]
        try:
            resp = await client.completions.create(
                model=self.endpoint.model, prompt=ids, max_tokens=1, echo=True, logprobs=k, temperature=0.0,
                extra_body={"return_tokens_as_token_ids": True})
        except openai.OpenAIError as e:
            raise JobError(explain_failure(e, self.endpoint)) from None
        data = resp.model_dump() if hasattr(resp, "model_dump") else resp
        choice = (data.get("choices") or [{}])[0]
        lp = choice.get("logprobs") or {}
        tops, tokens = lp.get("top_logprobs"), lp.get("tokens")
        if not tops or not tokens:
            raise self._no_logprobs("no choices[0].logprobs.top_logprobs in its answer")
        if len(tokens) < len(ids) or [_token_id(t, self.tokenizer) for t in tokens[:len(ids)]] != ids:
            raise JobError(f"teacher at {self.url} echoed other tokens than the student's ids it was sent: it has "
                           "another tokenizer (or ignores token-id prompts); use a teacher of the student's family")
        pos = trained_positions(example["labels"])
        if any(_token_id(t, self.tokenizer) >= len(self.tokenizer) for p in pos for t in (tops[p] or {})):
            raise JobError(f"teacher at {self.url} returned token ids beyond the student's vocabulary of "
                           f"{len(self.tokenizer)}: it has another tokenizer; use a teacher of the student's family")
        out_ids = np.zeros((len(pos), k), dtype=np.int64)
        out_lps = np.full((len(pos), k), -np.inf, dtype=np.float32)
        for row, p in enumerate(pos):
            entries = tops[p] or {}
            if not entries:
                raise self._no_logprobs(f"position {p} has no top_logprobs")
            best = sorted(((float(v), _token_id(t, self.tokenizer)) for t, v in entries.items()), reverse=True)[:k]
            for j, (v, t) in enumerate(best):
                out_ids[row, j], out_lps[row, j] = t, v
        return out_ids, out_lps

    async def _all(self, examples: list[dict], k: int) -> list:
        from pai_distil_jobs.endpoints.resumable import ask_in_order

        return await ask_in_order(examples, lambda client, example: self._one(client, example, k), self.endpoint)

    def score(self, examples: list[dict], k: int, pad_id: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return asyncio.run(self._all(examples, k))

    def topk(self, input_ids, attention_mask, labels, k: int):
        """As LocalTeacher.topk, from the endpoint: the batch's rows sent one request each."""
        import torch

        rows = []
        for i in range(input_ids.shape[0]):
            n = int(attention_mask[i].sum())
            rows.append({"input_ids": input_ids[i, :n].tolist(), "labels": labels[i, :n].tolist()})
        scored = self.score(rows, k)
        B, T = input_ids.shape
        ids = torch.zeros((B, T, k), dtype=torch.long, device=input_ids.device)
        lps = torch.full((B, T, k), float("-inf"), dtype=torch.float32, device=input_ids.device)
        for i, (row, (sid, slp)) in enumerate(zip(rows, scored)):
            pos = torch.tensor(trained_positions(row["labels"]), dtype=torch.long, device=input_ids.device)
            ids[i, pos], lps[i, pos] = torch.from_numpy(sid).to(ids.device), torch.from_numpy(slp).to(lps.device)
        return ids, lps


def _token_id(token: str, tokenizer) -> int:
    """vLLM's `return_tokens_as_token_ids` form `token_id:N`; a plain token string by the vocabulary."""
    if token.startswith("token_id:"):
        return int(token.split(":", 1)[1])
    found = tokenizer.convert_tokens_to_ids(token)
    return -1 if found is None else int(found)


def resolve_teacher(cfg, ctx):
    """`specs.LogitsTeacher` with the stage's `teacher` input as its model when it names neither."""
    if cfg.from_input:
        return cfg.model_copy(update={"model": str(ctx.input("teacher"))})
    return cfg


def open_teacher(cfg, student_tok, student_name: str, load=None):
    """The configured teacher (`specs.LogitsTeacher`), refused in one line unless it shares the student's
    tokenizer; `load(spec, seed)` places a local one (see `LocalTeacher`)."""
    if cfg.model is not None:
        from pai_distil_jobs.models.models import load_tokenizer

        check_same_tokenizer(load_tokenizer(cfg.model), student_tok, cfg.model, student_name)
        return LocalTeacher(cfg.model, seed=cfg.seed, batch_size=cfg.batch_size, load=load)
    teacher = EndpointTeacher(cfg.endpoint, student_tok)
    teacher.check_tokenizer("<|im_start|>user\nStart with 7. Add 5.<|im_end|>\n<|im_start|>assistant\n<think>")
    return teacher


# -- on disk -----------------------------------------------------------------------------------------


def shard_name(start: int, end: int) -> str:
    return f"shard-{start:08d}-{end:08d}.safetensors"


def write_shard(folder: Path, start: int, end: int, keys: list[str], scored: list, targets: list[list[int]],
                k: int, vocab: int, meta: dict) -> Path:
    """Rows [start, end) as one shard, written to a temporary name and renamed: complete or absent."""
    from safetensors.numpy import save_file

    dtype = np.uint16 if vocab <= 65536 else np.int32
    n = [len(t) for t in targets]
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    ids = np.concatenate([s[0] for s in scored]).astype(dtype) if scored else np.zeros((0, k), dtype)
    lps = np.concatenate([s[1] for s in scored]).astype(np.float16) if scored else np.zeros((0, k), np.float16)
    tg = np.concatenate([np.asarray(t) for t in targets]).astype(dtype) if targets else np.zeros(0, dtype)
    path = folder / shard_name(start, end)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"ids": np.ascontiguousarray(ids), "logprobs": np.ascontiguousarray(lps), "targets": tg,
               "offsets": offsets}, str(tmp), metadata={"keys": json.dumps(keys), "top_k": str(k), **meta})
    os.replace(tmp, path)
    return path


def shard_range(path: Path) -> tuple[int, int]:
    _, start, end = path.name.removesuffix(".safetensors").split("-")
    return int(start), int(end)


class TopKStore:
    """The teacher-logits artifact, read lazily: row key -> (targets [n], ids [n, k], logprobs [n, k])."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        shards = sorted(self.folder.glob(SHARD_GLOB))
        if not shards:
            raise JobError(f"input 'teacher_logits' ({folder}) holds no {SHARD_GLOB}; pass the output of a "
                           "teacher-logits stage")
        self._files, self._where, self.meta = [], {}, {}
        for s in shards:
            f = safe_open(str(s), framework="np")
            meta = f.metadata()
            self.meta = meta
            offsets = f.get_tensor("offsets")
            for j, key in enumerate(json.loads(meta["keys"])):
                self._where[key] = (len(self._files), int(offsets[j]), int(offsets[j + 1]))
            self._files.append(f)
        self.top_k = int(self.meta["top_k"])

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, a, b = self._where[key]
        f = self._files[f]
        return (f.get_slice("targets")[a:b].astype(np.int64), f.get_slice("ids")[a:b].astype(np.int64),
                f.get_slice("logprobs")[a:b].astype(np.float32))


def covered_rows(folder: Path, meta: dict) -> set[int]:
    """Row indices already in complete shards of `folder`; shards of another scoring are refused."""
    from safetensors import safe_open

    done: set[int] = set()
    for tmp in folder.glob(SHARD_GLOB + ".tmp"):
        tmp.unlink()  # a shard the last run did not finish writing
    for s in sorted(folder.glob(SHARD_GLOB)):
        with safe_open(str(s), framework="np") as f:
            theirs = f.metadata()
        mismatch = [k for k, v in meta.items() if theirs.get(k) != v]
        if mismatch:
            raise JobError(f"{folder} holds shards scored with another {mismatch[0]} ({theirs.get(mismatch[0])!r}, "
                           f"now {meta[mismatch[0]]!r}); use a fresh output, or delete them to rescore")
        a, b = shard_range(s)
        done.update(range(a, b))
    return done


def todo_runs(total: int, done: set[int], shard_rows: int) -> list[tuple[int, int]]:
    """Ranges [a, b) of rows still to score, cut at multiples of `shard_rows` (one shard each)."""
    runs, a = [], None
    for i in range(total + 1):
        missing = i < total and i not in done
        if missing and a is None:
            a = i
        if a is not None and (not missing or i % shard_rows == 0 and i > a):
            runs.append((a, i))
            a = i if missing else None
    return runs


def size_report(folder: Path) -> dict:
    """Bytes on disk against the top-k ids stored as int32 (the compactness the artifact promises)."""
    from safetensors import safe_open

    files = sorted(folder.glob(SHARD_GLOB))
    tokens = k = 0
    for s in files:
        with safe_open(str(s), framework="np") as f:
            shape = f.get_slice("ids").get_shape()
            tokens, k = tokens + shape[0], shape[1] if len(shape) > 1 else k
    size = sum(s.stat().st_size for s in files)
    ids_int32 = tokens * k * 4
    return {"shards": len(files), "tokens": tokens, "top_k": k, "bytes": size,
            "topk_ids_int32_bytes": ids_int32, "ratio_to_topk_ids_int32": round(size / ids_int32, 4) if ids_int32 else None}


def log_progress(done: int, total: int) -> None:
    log(f"[progress] teacher-logits {done}/{total}")
