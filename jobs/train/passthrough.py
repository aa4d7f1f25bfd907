"""What a user's training config adds to TrainingArguments beyond our fields: `train.extra` passed
through, and `train.epochs` turned into max_steps once the job knows its rows."""

from __future__ import annotations

import math
from dataclasses import fields

from pai_distil.core.contract import JobError
from pai_distil.core.suggest import did_you_mean

# Fixed defaults of ours with no config field: `train.extra` may change them.
EXTRA_MAY_CHANGE = frozenset({"adam_beta2", "max_grad_norm"})


def passed_through(s, cls, ours: dict) -> dict:
    """`train.extra` of TrainSettings `s`, checked against the fields of `cls` (TrainingArguments or a TRL
    config) and against `ours`, what we set: validate refuses what it can see; a stage trainer's own fields
    (DPO's beta, GRPO's num_generations) only the job knows."""
    if not s.extra:
        return {}
    known = {f.name for f in fields(cls)}
    for name in s.extra:
        if name not in known:
            raise JobError(f"train.extra.{name}: {cls.__name__} has no field {name!r}{did_you_mean(name, known)}")
    clash = sorted(set(s.extra) & set(ours) - EXTRA_MAY_CHANGE)
    if clash:
        raise JobError(f"train.extra sets {', '.join(clash)}, which this stage sets from its config; remove "
                       "them from train.extra")
    return dict(s.extra)


def fit_epochs(s, examples: int) -> None:
    """`train.epochs`: max_steps (and the default warmup over it) from the rows the job kept, the steps of
    one epoch as the data loader makes them (a last partial batch dropped where a whole one exists)."""
    if s.epochs is None:
        return
    s.max_steps = max(1, math.ceil(s.epochs * max(1, examples // s.batch_size)))
    if s.warmup_steps is None:
        s.warmup_steps = min(s.warmup_longest, s.max_steps // 10)
