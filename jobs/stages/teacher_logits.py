"""Stage `teacher-logits`: the teacher's top-k token distribution at every trained token of SFT rows.

The rows are read as slow-thinking reads them and tokenized as it will (the student's chat
template, loss mask and `max_length`), so the stored positions are exactly the tokens KD trains.
Like `generate`, the work is kept as it is done: each shard of `shard_rows` rows is written whole
(temporary name, then rename) the moment it is scored; a killed job's rerun reads which rows the
shards hold and scores only the rest. SIGTERM writes the rows scored so far as a shard and stops.
"""

from __future__ import annotations

import json
import signal

from pai_distil.core.presets import trains_like_preset
from pai_distil.core.config import PRESET_TRAINING, CHECKPOINT_TRAINING, TeacherLogitsConfig

from pai_distil.core.contract import JobContext, log
from pai_distil_jobs.models.models import load_tokenizer
from pai_distil_jobs.train.sft_data import log_example
from pai_distil_jobs.train.teacher_topk import covered_rows, keyed_examples, log_progress, open_teacher, resolve_teacher, size_report, tokenizer_digest, todo_runs, trained_positions, write_shard
from .slow_thinking import sft_rows

SUMMARY = "summary.json"


def run(ctx: JobContext) -> bool | None:
    cfg = ctx.parsed_config(TeacherLogitsConfig)
    student = cfg.student.model
    tokenizer = load_tokenizer(student)
    cfg.teacher = resolve_teacher(cfg.teacher, ctx)
    teacher = open_teacher(cfg.teacher, tokenizer, student)  # a teacher with another tokenizer stops here
    rows = sft_rows(ctx.input("cots"), cfg.require_correct)[: cfg.max_samples]
    max_length = cfg.max_length or (PRESET_TRAINING if trains_like_preset(student) else CHECKPOINT_TRAINING)["max_length"]
    examples, keys = keyed_examples(tokenizer, rows, max_length, cfg.max_truncated, log=log)
    log_example(tokenizer, examples[0], log)
    name = cfg.teacher.model or f"{cfg.teacher.endpoint.base_url} {cfg.teacher.endpoint.model}"
    meta = {"top_k": str(cfg.top_k), "teacher": name, "tokenizer": tokenizer_digest(tokenizer),
            "max_length": str(max_length)}
    ctx.output.mkdir(parents=True, exist_ok=True)
    done = covered_rows(ctx.output, meta)
    runs = todo_runs(len(examples), done, cfg.shard_rows)
    todo = sum(b - a for a, b in runs)
    if done:
        log(f"teacher-logits: resuming, {len(done)} of {len(examples)} rows already scored")
    where = "in the job" if cfg.teacher.model else "at the endpoint"
    log(f"teacher-logits: teacher {name!r} ({where}) scores {todo} rows, top {cfg.top_k} per trained token, "
        f"{cfg.shard_rows} rows per shard")

    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    vocab = len(tokenizer)
    scored_now, count = 0, len(done)
    batch = cfg.teacher.batch_size if cfg.teacher.model else cfg.teacher.endpoint.concurrency * 4
    try:
        for a, b in runs:
            got, i = [], a
            while i < b and not stop["now"]:
                part = examples[i:min(b, i + batch)]
                got += teacher.score(part, cfg.top_k, tokenizer.pad_token_id)
                i += len(part)
                count += len(part)
                log_progress(count, len(examples))
            if got:
                targets = [[examples[j]["labels"][p] for p in trained_positions(examples[j]["labels"])]
                           for j in range(a, i)]
                write_shard(ctx.output, a, i, keys[a:i], got, targets, cfg.top_k, vocab, meta)
                scored_now += i - a
            if stop["now"]:
                log(f"teacher-logits: stopped by SIGTERM after {count}/{len(examples)} rows; rerun to resume")
                return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = {"rows": len(examples), "scored": scored_now, "resumed": len(done), "teacher": name,
               "student": student, **size_report(ctx.output)}
    (ctx.output / SUMMARY).write_text(json.dumps(summary, indent=1))
    log(f"teacher-logits: {summary['rows']} rows ({summary['resumed']} resumed), {summary['tokens']} tokens, "
        f"{summary['bytes'] / 2**20:.1f} MiB = {summary['ratio_to_topk_ids_int32']}x the top-k ids as int32")
    return None
