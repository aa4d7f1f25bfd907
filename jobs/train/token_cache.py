"""Training rows tokenised once per run and cached beside the checkpoints.

Why: every rank used to tokenise the whole data set in Python at every start and resume (about
50 ms per 21k-token row: 100k rows took some 80 minutes per rank). Now global rank 0 encodes the
rows in a pool of processes, each writing one Arrow shard (datasets' own writer), into
`checkpoint_dir/encoded/<key>`; the other ranks wait for that folder and memory-map it, and a
resumed run reads it without tokenising.

The key covers everything the encoded ids depend on: each row's messages and template flags, in
order; whether every assistant turn is trained; the tokenizer (its whole `tokenizer.json`, special
tokens, chat template); `max_length`; and the source of the encoding code itself. The rows are
`sft_data.encode_each`'s, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pai_distil.core.contract import log

CACHE_DIR = "encoded"
META = "meta.json"  # written last: the folder is complete with it
VERSION = 1
MIN_ROWS_PER_WORKER = 256  # below this a worker process costs more than it saves
SHARDS_PER_WORKER = 4  # rows differ in length: smaller shards even out the workers' loads

_job: dict = {}  # the rows and tokenizer forked workers inherit (never pickled)


def cache_key(tokenizer, rows: list[dict], max_length: int, keyed: bool = False, all_turns: bool = False) -> str:
    """The digest of what the encoded rows depend on (see the module's docstring)."""
    import pai_distil_jobs.models.chat_template as chat_template
    import pai_distil_jobs.train.sft_data as sft_data
    from pai_distil_jobs.train.teacher_topk import row_key, tokenizer_digest

    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(json.dumps({
        "version": VERSION, "max_length": max_length, "keyed": keyed, "all_turns": all_turns,
        "class": type(tokenizer).__name__,
        "vocab": tokenizer_digest(tokenizer), "template": tokenizer.chat_template,
        "tokenizer_json": hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None,
        "code": [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (sft_data, chat_template)],
    }, sort_keys=True, default=str).encode())
    for row in rows:
        h.update(row_key(row).encode())
    return h.hexdigest()[:32]


def encoded_rows(tokenizer, rows: list[dict], max_length: int, max_truncated: float, cache_root: Path,
                 keyed: bool = False, say=log, all_turns: bool = False):
    """The rows encoded as a `datasets.Dataset` (columns input_ids, labels, length, and kd_key when
    `keyed`; every assistant turn trained with `all_turns`), from the cache in `cache_root` (a run's
    checkpoint folder) or built there by global rank 0 while the other ranks wait. Rows whose prompt
    alone exceeds `max_length` are left out; the truncation report is logged (and checked against
    `max_truncated`) on every call."""
    import datasets

    from pai_distil_jobs.train.build_once import build_once
    from pai_distil_jobs.train.sft_data import check_truncation

    key = cache_key(tokenizer, rows, max_length, keyed, all_turns)
    folder = Path(cache_root) / CACHE_DIR / key
    writer = int(os.environ.get("RANK", "0")) == 0
    if (folder / META).exists():
        say(f"encoded rows: read from the cache {folder}")
    build_once(folder, lambda tmp: _build(tmp, tokenizer, rows, max_length, keyed, key, say, all_turns),
               writer=writer, complete=META, say=say, what="the encoded training rows", check=_whole)
    if writer:
        _prune(folder)
    meta = json.loads((folder / META).read_text())
    check_truncation(meta["rows"], meta["kept"], meta["cut"], meta["lost"], max_length, max_truncated, say)
    shards = [datasets.Dataset.from_file(str(folder / name)) for name in meta["shards"]]
    return datasets.concatenate_datasets(shards) if len(shards) > 1 else shards[0]


def features(keyed: bool):
    from datasets import Features, List, Value

    cols = {"input_ids": List(Value("int32")), "labels": List(Value("int32")), "length": Value("int32")}
    return Features({**cols, **({"kd_key": Value("string")} if keyed else {})})


def _build(tmp: Path, tokenizer, rows: list[dict], max_length: int, keyed: bool, key: str, say,
           all_turns: bool = False) -> None:
    """Encode `rows` into Arrow shards in `tmp`, in worker processes where the rows are many; META last."""
    import time

    t0 = time.time()
    cpus = len(os.sched_getaffinity(0))
    workers = max(1, min(cpus, len(rows) // MIN_ROWS_PER_WORKER))
    per = max(1, -(-len(rows) // (workers * SHARDS_PER_WORKER)) if workers > 1 else len(rows))
    tasks = [(a, min(a + per, len(rows)), str(tmp / f"shard-{a:09d}.arrow"), max_length, keyed, all_turns)
             for a in range(0, len(rows), per)]
    _job.update(rows=rows, tokenizer=tokenizer)
    try:
        if workers == 1:
            stats = [_encode_shard(t) for t in tasks]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                stats = list(pool.map(_encode_shard, tasks))
    finally:
        _job.clear()
    meta = {"key": key, "rows": len(rows), "max_length": max_length, "shards": [Path(t[2]).name for t in tasks],
            "bytes": [Path(t[2]).stat().st_size for t in tasks],
            **{k: sum(s[k] for s in stats) for k in ("kept", "cut", "lost", "tokens")}}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    say(f"encoded rows: {len(rows)} rows, {meta['tokens']} tokens tokenised in {time.time() - t0:.1f} s by "
        f"{workers} process{'es' if workers > 1 else ''}; cached for every rank and resume")


def _encode_shard(task: tuple) -> dict:
    """Rows [a, b) encoded into one Arrow file; counts for the truncation report."""
    from datasets.arrow_writer import ArrowWriter

    from pai_distil_jobs.train.sft_data import encode_each
    from pai_distil_jobs.train.teacher_topk import row_key

    a, b, path, max_length, keyed, all_turns = task
    rows = _job["rows"][a:b]
    stats = dict.fromkeys(("kept", "cut", "lost", "tokens"), 0)
    with ArrowWriter(features=features(keyed), path=path) as w:
        for row, e in zip(rows, encode_each(_job["tokenizer"], rows, max_length, first=a + 1, all_turns=all_turns)):
            if e is None:
                continue
            record = {"input_ids": e["input_ids"], "labels": e["labels"], "length": len(e["input_ids"])}
            w.write({**record, **({"kd_key": row_key(row)} if keyed else {})})
            stats["kept"] += 1
            stats["cut"] += e["truncated"]
            stats["lost"] += not e["ended"]
            stats["tokens"] += len(e["input_ids"])
        w.finalize()
    return stats


def _whole(folder: Path) -> bool:
    """Every shard its meta names is there at its full size (a copy in flight is not read)."""
    try:
        meta = json.loads((folder / META).read_text())
        return all((folder / n).stat().st_size == b for n, b in zip(meta["shards"], meta["bytes"], strict=True))
    except (OSError, ValueError, KeyError):  # unreadable, half-copied or from another version: not whole
        return False


def _prune(keep: Path) -> None:
    """Encodings of earlier inputs or settings in the same run folder: never read again."""
    for other in keep.parent.iterdir():
        if other != keep and not other.name.startswith(".tmp-") and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
