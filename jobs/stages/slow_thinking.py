"""slow-thinking: supervised distillation of verified chains of thought into the student."""

from __future__ import annotations

import os
from pathlib import Path


from pai_distil.core.config import SlowThinkingConfig

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.cot_data import read_cots, require, thinking_row
from pai_distil_jobs.train.sft_train import train_sft


def sft_rows(path: Path, require_correct: bool, verbosity: list[int] | None = None) -> list[dict]:
    """SFT rows (`messages`) from a generate/score artifact, a CoT-sample JSONL or an SFT JSONL."""
    out = []
    for n, row in enumerate(read_cots(path), 1):
        if "messages" in row:  # an assistant turn's reasoning_content becomes its think block (sft_data)
            out.append({k: row[k] for k in ("messages", "chat_template_kwargs") if k in row})
            continue
        require(row, n, ("problem", "thought", "solution"), f"input 'cots' ({path})")
        if require_correct and not row.get("correct"):
            continue
        if verbosity is not None and row.get("requested_rv", row.get("rv")) not in verbosity:
            continue
        out.append(thinking_row(row))
    return out


def run(ctx: JobContext) -> bool:
    cfg = ctx.parsed_config(SlowThinkingConfig)
    if "student" in ctx.inputs:  # continue training a checkpoint of an earlier stage (e.g. a stopped student)
        cfg.student = cfg.student.model_copy(update={"model": str(ctx.input("student"))})
    rows = sft_rows(ctx.input("cots"), cfg.require_correct, cfg.verbosity)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    if not rows:
        raise JobError("no training rows: the input holds no verified chains of thought (check the generate stage's teacher accuracy)")
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"slow-thinking: {len(rows)} training conversations, student {cfg.student.model}")
    return train_sft(ctx, cfg.student, cfg.train, rows, distill=cfg.distill)
