"""slow-thinking: supervised distillation of verified chains of thought into the student."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from pai_distil.specs import SlowThinkingConfig, explain

from ..contract import JobContext, JobError, log
from ..lib.problems import read_jsonl
from ..lib.sft_train import train_sft


def sft_rows(path: Path, require_correct: bool) -> list[dict]:
    """SFT rows (`messages`) from a generate artifact, a CoT-sample JSONL or an SFT JSONL."""
    if path.is_dir():
        cots, sft = path / "cots.jsonl", path / "sft.jsonl"
        path = cots if cots.is_file() else sft
        if not path.is_file():
            raise JobError(f"input 'cots' ({path.parent}) holds neither cots.jsonl nor sft.jsonl; pass the output of `generate`")
    rows = read_jsonl(path)
    out = []
    for n, row in enumerate(rows, 1):
        if "messages" in row:
            out.append({"messages": row["messages"]})
            continue
        missing = [f for f in ("problem", "thought", "solution") if f not in row]
        if missing:
            raise JobError(f"{path} row {n}: field '{missing[0]}' is missing; rows need `messages` or problem/thought/solution")
        if require_correct and not row.get("correct"):
            continue
        answer = f"<think>\n{row['thought']}\n</think>\n\n{row['solution']}"
        out.append({"messages": [{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": answer}]})
    return out


def run(ctx: JobContext) -> bool:
    try:
        cfg = SlowThinkingConfig.model_validate(ctx.config)
    except ValidationError as e:
        raise JobError(explain(e, "slow-thinking config")) from None
    rows = sft_rows(ctx.input("cots"), cfg.require_correct)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    if not rows:
        raise JobError("no training rows: the input holds no verified chains of thought (check the generate stage's teacher accuracy)")
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"slow-thinking: {len(rows)} training conversations, student {cfg.student.model}")
    return train_sft(ctx, cfg.student, cfg.train, rows)
