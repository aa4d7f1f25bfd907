"""slow-thinking: supervised distillation of verified chains of thought into the student."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path


from pai_distil.core.config import SlowThinkingConfig
from pai_distil.core.readers import row_verdict

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.cot_data import read_sft, require, thinking_row
from pai_distil_jobs.train.sft_train import train_sft


def sft_rows(path: Path, require_correct: bool, verbosity: list[int] | None = None) -> list[dict]:
    """SFT rows (`messages`) from a generate/score artifact, CoT samples, or the user's chat rows
    (OpenAI messages, ShareGPT, Alpaca: every turn kept, no prompt added). `require_correct` drops
    only rows with an answer to check that fails (`row_verdict`); JobError saying what dropped them
    when none is left."""
    rows = read_sft(path)
    out, dropped = [], Counter()
    for n, row in enumerate(rows, 1):
        chat = "messages" in row
        if not chat:
            require(row, n, ("problem", "thought", "solution"), f"input 'cots' ({path})")
        if require_correct and row_verdict(row) is False:
            dropped["not verified correct"] += 1
        elif verbosity is not None and row.get("requested_rv", row.get("rv")) not in verbosity:
            dropped["outside verbosity"] += 1
        else:  # a chat row's reasoning_content becomes its think block in sft_data
            out.append({k: row[k] for k in ("messages", "chat_template_kwargs") if k in row} if chat
                       else thinking_row(row))
    if not out:
        raise JobError(no_rows_message(len(rows), dropped))
    return out


FIXES = {"not verified correct": "set require_correct: false to train them anyway",
         "outside verbosity": "their requested_rv is not in verbosity; widen or drop it"}


def no_rows_message(total: int, dropped: Counter) -> str:
    """Why no training row is left: how many rows each filter dropped, and the field that keeps them."""
    if not total:
        return "no training rows: the input 'cots' holds no rows"
    return "no training rows: " + "; ".join(f"{v} of {total} rows dropped as {k} ({FIXES[k]})"
                                            for k, v in dropped.items())


def run(ctx: JobContext) -> bool:
    cfg = ctx.parsed_config(SlowThinkingConfig)
    if "student" in ctx.inputs:  # continue training a checkpoint of an earlier stage (e.g. a stopped student)
        cfg.student = cfg.student.model_copy(update={"model": str(ctx.input("student"))})
    rows = sft_rows(ctx.input("cots"), cfg.require_correct, cfg.verbosity)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"slow-thinking: {len(rows)} training conversations, student {cfg.student.model}")
    return train_sft(ctx, cfg.student, cfg.train, rows, distill=cfg.distill)
