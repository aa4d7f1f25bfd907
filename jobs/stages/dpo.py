"""dpo: direct preference optimisation of the student on {prompt, chosen, rejected} pairs.

The pairs are the reward-model stage's (`pairs.jsonl` of its output: the teacher's and the
student's candidates ranked by the judge, the DistilQwen2 recipe) or a user's JSONL file; the
student is the `student` input (an SFT checkpoint: "SFT -> DPO") or `student.model`, and it is
also the reference. Training is TRL's DPOTrainer with its loss variants (`lib/dpo.py`);
report.json holds the held-out pairwise preference before and after.
"""

from __future__ import annotations

from pai_distil.core.config import DPOConfig

from pai_distil.core.contract import JobContext, log
from pai_distil_jobs.train.dpo import read_pairs, split_pairs, train_dpo


def run(ctx: JobContext) -> bool:
    cfg = ctx.parsed_config(DPOConfig)
    train_rows, eval_rows = split_pairs(read_pairs(ctx.input("pairs")), cfg.eval_fraction, cfg.seed)
    if cfg.max_pairs:
        train_rows = train_rows[: cfg.max_pairs]
    source = str(ctx.input("student")) if "student" in ctx.inputs else cfg.student.model
    if ctx.is_main_process:
        log(f"dpo: {len(train_rows)} preference pairs to train, {len(eval_rows)} held out; student {source}")
    return train_dpo(ctx, cfg, source, train_rows, eval_rows)
