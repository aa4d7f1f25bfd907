"""adaptive-thinking: students that think as much as a problem needs.

Variant x (ThoughtX) keeps, for every problem, the chain whose Reasoning Verbosity fits the
problem's Cognitive Difficulty (scored by the `score` stage) and orders them as a curriculum.
Variant y (ThoughtY) mixes thinking and non-thinking samples so that one student follows an
explicit switch: `enable_thinking` in the chat template, or `/think` / `/no_think` in the prompt.
"""

from __future__ import annotations

import io
import os
import random
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pai_distil.core.config import AdaptiveThinkingConfig, RVPolicy

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.cot_data import non_thinking_row, read_cots, require, thinking_row
from pai_distil_jobs.train.sft_train import train_sft

FIELDS = ("problem_id", "problem", "thought", "solution", "correct")


def _group(rows: list[dict], path: Path, extra: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for n, row in enumerate(rows, 1):
        require(row, n, FIELDS + extra, f"input 'cots' ({path})")
        by_problem[str(row["problem_id"])].append(row)
    return by_problem


def select_x(by_problem: dict[str, list[dict]], policy: RVPolicy) -> tuple[list[dict], list[dict]]:
    """(selected rows, per-CD-bin statistics) under the RV-fits-CD policy."""
    selected: dict[int, list[dict]] = defaultdict(list)
    seen: dict[int, int] = defaultdict(int)
    for rows in by_problem.values():
        scored = [r for r in rows if r.get("rv") is not None and r.get("cd") is not None]
        if not scored:
            continue
        cd = int(scored[0]["cd"])
        seen[cd] += 1
        target = policy.target(cd)
        fits = [r for r in scored if abs(r["rv"] - target) <= policy.tolerance
                and (r["correct"] or not policy.require_correct)]
        fits.sort(key=lambda r: (abs(r["rv"] - target), r["rv"]))
        selected[cd] += fits[: policy.per_problem]
    stats, out = [], []
    for cd in sorted(seen):
        rows = selected[cd][: policy.max_per_bin] if policy.max_per_bin else selected[cd]
        if len(rows) < policy.min_per_bin:
            raise JobError(f"CD level {cd} keeps {len(rows)} rows, fewer than policy.min_per_bin={policy.min_per_bin}; "
                           "generate more verbosity levels per problem or widen policy.tolerance")
        rvs = [r["rv"] for r in rows]
        stats.append({"cd": cd, "problems": seen[cd], "selected": len(rows), "target_rv": policy.target(cd),
                      "mean_rv": sum(rvs) / len(rvs) if rvs else None})
        out += rows
    return out, stats


def order_rows(rows: list[dict], curriculum: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = rows[:]
    rng.shuffle(rows)
    if curriculum == "easy-to-hard":
        rows.sort(key=lambda r: r["cd"])  # stable: shuffled within a CD level
    return rows


def build_y(by_problem: dict[str, list[dict]], cfg: AdaptiveThinkingConfig,
            soft_only: bool = False) -> tuple[list[dict], dict]:
    """Thinking rows plus, for a share of problems, a non-thinking row (empty thought); `soft_only`: every
    non-thinking row switches with /no_think (for templates without enable_thinking)."""
    rng = random.Random(cfg.seed)
    rows, counts = [], defaultdict(int)
    for problem_rows in by_problem.values():
        ok = [r for r in problem_rows if r["correct"]
              and (cfg.think_verbosity is None or r.get("requested_rv", r.get("rv")) in cfg.think_verbosity)]
        if not ok:
            continue
        think = max(ok, key=lambda r: len(r["thought"]))
        soft = rng.random() < cfg.soft_switch_ratio
        rows.append(thinking_row(think, " /think" if soft else ""))
        counts["thinking"] += 1
        if rng.random() < cfg.no_think_ratio:
            soft = rng.random() < cfg.soft_switch_ratio or soft_only
            rows.append(non_thinking_row(think, soft))
            counts["non-thinking (/no_think)" if soft else "non-thinking (enable_thinking=False)"] += 1
    rng.shuffle(rows)
    return rows, dict(counts)


def build_y_for_template(by_problem: dict[str, list[dict]], cfg: AdaptiveThinkingConfig,
                         say=log) -> tuple[list[dict], dict]:
    """`build_y`, checked against the student's template: a template that ignores enable_thinking would
    make the non-thinking rows contradict the thinking ones and both modes one at inference."""
    rows, counts = build_y(by_problem, cfg)
    if not any("chat_template_kwargs" in r for r in rows):
        return rows, counts
    from pai_distil_jobs.models.chat_template import honours_enable_thinking
    from pai_distil_jobs.models.models import load_tokenizer

    if honours_enable_thinking(load_tokenizer(cfg.student.model)):
        return rows, counts
    if cfg.no_template_switch == "refuse":
        raise JobError(f"variant y: the chat template of {cfg.student.model} ignores enable_thinking (its prompt is "
                       "the same with True and False), so non-thinking rows would contradict thinking ones; use a "
                       "student with a thinking switch (Qwen3), or set no_template_switch: soft_switch to train "
                       "/no_think rows instead")
    say("variant y: the student's chat template ignores enable_thinking; every non-thinking row uses /no_think")
    return build_y(by_problem, cfg, soft_only=True)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> str:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None).print(t)
    return buf.getvalue().rstrip()


def run(ctx: JobContext) -> bool:
    cfg = ctx.parsed_config(AdaptiveThinkingConfig)
    path = ctx.input("cots")
    main = int(os.environ.get("RANK", "0")) == 0
    if cfg.variant == "x":
        rows, stats = select_x(_group(read_cots(path), path, ("rv", "cd")), cfg.policy)
        rows = order_rows(rows, cfg.curriculum, cfg.seed)
        if main:
            log(_table("ThoughtX selection (RV fitted to CD)", ["CD", "problems", "selected", "target RV", "mean RV"],
                       [[str(s["cd"]), str(s["problems"]), str(s["selected"]), f"{s['target_rv']:.1f}",
                         "-" if s["mean_rv"] is None else f"{s['mean_rv']:.1f}"] for s in stats]))
        sft = [thinking_row(r) for r in rows]
    else:
        sft, counts = build_y_for_template(_group(read_cots(path), path), cfg,
                                           say=log if main else (lambda m: None))
        if main:
            log(_table("ThoughtY training mix", ["kind", "rows"], [[k, str(v)] for k, v in counts.items()]))
    if not sft:
        raise JobError("no training rows were selected; check the input's scores and the policy")
    if main:
        log(f"adaptive-thinking ({cfg.variant}): {len(sft)} training conversations, student {cfg.student.model}")
    finished = train_sft(ctx, cfg.student, cfg.train, sft,
                         keep_order=cfg.variant == "x" and cfg.curriculum == "easy-to-hard", distill=cfg.distill)
    if finished and main and cfg.variant == "y" and counts.get("non-thinking (/no_think)"):
        from pai_distil_jobs.models.chat_template import record_soft_switch

        record_soft_switch(ctx.output)  # servers and evaluate turn thinking off with /no_think where the template cannot
    return finished
