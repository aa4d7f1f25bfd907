"""reward-model: a scalar reward model distilled from the judge's ratings.

Candidates for every problem are the teacher's chains of the `cots` input (several verbosities,
right and wrong: a noisy teacher slips), right chains cut short (`cut_chains`: the answer of a
solver that skipped steps, so the head does not learn that shorter is better) and samples of the
`student` input (the answers GRPO will see). The judge rates each on correctness, reasoning verbosity (RV) and cognitive
difficulty (CD); `judgment` turns the ratings into one score (correctness first, then how well
the length fits the difficulty). Pairs of candidates of one problem whose scores differ become
preference rows {"prompt", "chosen", "rejected"}; a held-out share of the problems measures
pairwise accuracy. The model starts from the `base` input when given, else from the student
(`lib/reward.py` says how it scores). Training is transformers' Trainer over accelerate with a
Bradley-Terry loss and the shared job layer, so checkpoints, resume and SIGTERM behave as in the
SFT stages; candidates and ratings are
files, so a restarted job neither samples nor asks the judge again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
from collections import defaultdict
from functools import partial
from pathlib import Path

import openai

from pai_distil.core.config import RewardModelConfig
from pai_distil.core.think import split_thought
from pai_distil.core.verifiers import check

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.cot_data import assistant_text, read_cots, require
from pai_distil_jobs.endpoints.judge_client import ask as ask_judge
from pai_distil_jobs.data.problems import level_of
from pai_distil_jobs.endpoints.prompts import user_message
from pai_distil_jobs.endpoints.resumable import Stopped, load_done, pending, run_pool
from pai_distil_jobs.train.trainer import by_kind_here

SAMPLES = "student_samples.jsonl"
JUDGED = "judged.jsonl"
CANDIDATES = "candidates.jsonl"
PAIRS = "pairs.jsonl"
REPORT = "report.json"
PREFERENCES = "preferences"  # beside the checkpoints: rank 0 writes candidates and pairs, every rank reads them
DONE = "DONE"
DIMENSIONS = ("correct", "rv", "cd")


def problems_of(rows: list[dict], limit: int | None) -> dict[str, list[dict]]:
    """The `cots` rows grouped by problem, in order of first appearance, at most `limit` problems."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for n, row in enumerate(rows, 1):
        require(row, n, ("problem", "thought", "solution", "correct"), "input 'cots'")
        pid = str(row.get("problem_id") or row["problem"])
        if pid in by_problem or limit is None or len(by_problem) < limit:
            by_problem[pid].append(row)
    return by_problem


def problem_row(row: dict) -> dict:
    """The problem part of a CoT row (what the verifier and the prompt need)."""
    keep = ("problem", "answer", "domain", "verifier", "meta", "choices", "tests", "fn_name", "source")
    return {k: row[k] for k in keep if k in row}


def teacher_candidates(by_problem: dict[str, list[dict]]) -> list[dict]:
    out = []
    for pid, rows in by_problem.items():
        for k, row in enumerate(rows):
            out.append({**problem_row(row), "id": str(row.get("id") or f"{pid}-t{k}"), "problem_id": pid,
                        "completion": assistant_text(row), "source": f"teacher-rv{row.get('requested_rv', '?')}",
                        "correct": bool(row["correct"]), "rv": row.get("rv"), "cd": row.get("cd")})
    return out


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{[^{}]*\}")


def cut_short(row: dict, rng: random.Random) -> tuple[str, str] | None:
    """(thought, solution) of a chain stopped after a random number of its lines, answering the last
    number the kept lines reached: the answer of a solver that skipped the rest. None when the chain
    has fewer than two lines or the kept ones hold no number."""
    lines = [line for line in str(row["thought"]).splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    kept = lines[:rng.randint(1, len(lines) - 1)]
    numbers = _NUMBER.findall(kept[-1])
    if not numbers:
        return None
    boxed = "\\boxed{" + numbers[-1] + "}"
    solution = str(row["solution"])
    solution = _BOXED.sub(lambda _: boxed, solution) if _BOXED.search(solution) else f"The answer is {boxed}."
    return "\n".join(kept), solution


def cut_candidates(by_problem: dict[str, list[dict]], per_problem: int, seed: int) -> list[dict]:
    """Right teacher chains cut short (see `cut_short`), left for the judge to rate like student samples."""
    rng = random.Random(seed)
    out = []
    for pid, rows in by_problem.items():
        right = [r for r in rows if r["correct"]]
        for k in range(per_problem if right else 0):
            cut = cut_short(rng.choice(right), rng)
            if cut is not None:
                thought, solution = cut
                out.append({**problem_row(right[0]), "id": f"{pid}-cut{k}", "problem_id": pid,
                            "completion": assistant_text({"thought": thought, "solution": solution}),
                            "source": "teacher-cut", "correct": None, "rv": None, "cd": None})
    return out


def student_candidates(ctx: JobContext, cfg: RewardModelConfig, by_problem: dict[str, list[dict]]) -> list[dict]:
    """Samples of the `student` input, drawn once and kept in the output (a restart reads them)."""
    path = ctx.output / SAMPLES
    if path.exists():
        return read_jsonl(path)
    import torch

    from pai_distil_jobs.models.generation import generate
    from pai_distil_jobs.models.models import load_model

    s = cfg.student_samples
    model, tokenizer = load_model(ctx.input("student"))
    heads = [(pid, rows[0]) for pid, rows in by_problem.items()]
    jobs = [(pid, row, k) for pid, row in heads for k in range(s.per_problem)]
    prompts = [user_message(row) for _, row, _ in jobs]
    log(f"reward-model: sampling the student {s.per_problem}x on {len(heads)} problems (temperature {s.temperature})")
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        log(f"[progress] student samples {done}/{len(prompts)}")

    torch.manual_seed(s.seed)
    outs = generate(model, tokenizer, prompts, s.max_new_tokens, batch_size=s.batch_size,
                    temperature=s.temperature, on_batch=progress)
    rows = [{**problem_row(row), "id": f"{pid}-s{k}", "problem_id": pid, "completion": o["text"],
             "source": "student", "correct": None, "rv": None, "cd": None, "truncated": o["truncated"]}
            for (pid, row, k), o in zip(jobs, outs, strict=True)]
    write_jsonl(path, rows)
    return rows


def rate(ctx: JobContext, cfg: RewardModelConfig, candidates: list[dict]) -> bool:
    """Fill in correct / rv / cd: the judge (resumable, like `score`), else the verifier for correctness.
    Returns False when stopped by SIGTERM."""
    if cfg.judge is None:
        for c in candidates:
            if c["correct"] is None:
                c["correct"] = check(c, c["completion"]).correct
        return True
    out = ctx.output / JUDGED
    done, todo = pending([c for c in candidates if any(c.get(d) is None for d in DIMENSIONS)], lambda c: c["id"],
                         out, "judged")
    log(f"reward-model: judge {cfg.judge.model!r} rates {len(todo)} candidates ({len(done)} already rated)")

    async def ask(c: openai.AsyncOpenAI, cand: dict) -> dict:
        thought, solution = split_thought(cand["completion"])
        row = {"problem": cand["problem"], "answer": cand.get("answer", ""), "thought": thought, "solution": solution}
        dims = [d for d in DIMENSIONS if cand.get(d) is None]
        results = await asyncio.gather(*(ask_judge(c, cfg.judge, row, d) for d in dims))
        return {"id": cand["id"], **{d: v for d, (v, _) in zip(dims, results)}}

    try:
        asyncio.run(run_pool(todo, ask, cfg.judge, out, "judge", total=len(todo) + len(done), done=len(done)))
    except Stopped:
        return False
    done = load_done(out, "judged")
    for c in candidates:
        for d, v in done.get(c["id"], {}).items():
            if d in DIMENSIONS and c.get(d) is None:
                c[d] = v
        if c["correct"] is None:  # the judge's answer was unreadable: fall back on the verifier
            c["correct"] = check(c, c["completion"]).correct
        c["correct"] = bool(c["correct"])
    return True


def make_pairs(cfg: RewardModelConfig, candidates: list[dict]) -> list[dict]:
    """Preference rows: within a problem, a candidate beats another when its score is higher by
    `min_margin`; correct-vs-wrong pairs come first, then length-fit pairs."""
    rng = random.Random(cfg.seed)
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for c in candidates:
        if all(c["completion"] != o["completion"] for o in by_problem[c["problem_id"]]):
            by_problem[c["problem_id"]].append(c)
    pids = sorted(by_problem)
    rng.shuffle(pids)
    held_out = set(pids[: max(1, round(len(pids) * cfg.eval_fraction))])
    pairs = []
    for pid in sorted(by_problem):
        cands = by_problem[pid]
        found = [(a, b) for a in cands for b in cands if a["score"] - b["score"] >= cfg.min_margin]
        rng.shuffle(found)
        found.sort(key=lambda ab: ab[0]["correct"] == ab[1]["correct"])  # stable: correctness pairs first
        for a, b in found[: cfg.pairs_per_problem]:
            pairs.append({"prompt": user_message(a), "chosen": a["completion"], "rejected": b["completion"],
                          "problem_id": pid, "split": "eval" if pid in held_out else "train",
                          "kind": "correctness" if a["correct"] != b["correct"] else "length",
                          "level": level_of(a), "chosen_score": a["score"], "rejected_score": b["score"],
                          "chosen_source": a["source"], "rejected_source": b["source"]})
    return pairs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)


def accuracy_table(pairs: list[dict], margins: list[float]) -> dict:
    """Pairwise accuracy overall, per kind of pair and per level."""
    def acc(sel):
        return {"pairs": len(sel), "accuracy": round(sum(m > 0 for m in sel) / len(sel), 4) if sel else None}

    groups: dict[str, dict[str, list[float]]] = {"kind": defaultdict(list), "level": defaultdict(list)}
    for p, m in zip(pairs, margins, strict=True):
        groups["kind"][p["kind"]].append(m)
        groups["level"][p["level"]].append(m)
    return {"overall": acc(margins), "by_kind": {k: acc(v) for k, v in sorted(groups["kind"].items())},
            "by_level": {k: acc(v) for k, v in sorted(groups["level"].items())}}


def run(ctx: JobContext) -> bool:
    """Rank 0 builds the preference pairs (`build_pairs`: samples, judge calls, files) once per run; every
    rank then reads the same rows in the same order and trains (`train`)."""
    from pai_distil_jobs.train.build_once import build_once

    cfg = ctx.parsed_config(RewardModelConfig)
    try:
        folder = build_once(ctx.checkpoint_dir / PREFERENCES, lambda tmp: build_pairs(ctx, cfg, tmp),
                            writer=ctx.is_main_process, complete=DONE, say=log, what="the preference pairs")
    except Stopped:
        log("reward-model: stopped by SIGTERM while judging; resubmit to resume")
        return False
    candidates, pairs = read_jsonl(folder / CANDIDATES), read_jsonl(folder / PAIRS)
    if ctx.is_main_process:
        for name in (CANDIDATES, PAIRS):
            shutil.copyfile(folder / name, ctx.output / name)
    return train(ctx, cfg, [p for p in pairs if p["split"] == "train"], [p for p in pairs if p["split"] == "eval"],
                 candidates)


def build_pairs(ctx: JobContext, cfg: RewardModelConfig, folder: Path) -> None:
    """Candidates (teacher chains, cut chains, student samples), their ratings and the preference pairs, as
    `candidates.jsonl` and `pairs.jsonl` in `folder`, then `DONE`. Rank 0 alone: it calls the judge and
    samples the student (both resumable from files in the output). Raises `Stopped` on SIGTERM."""
    by_problem = problems_of(read_cots(ctx.input("cots")), cfg.max_problems)
    if not by_problem:
        raise JobError("input 'cots' holds no chains of thought; pass the output of `generate` or `score`")
    candidates = teacher_candidates(by_problem) + cut_candidates(by_problem, cfg.cut_chains, cfg.seed)
    if "student" in ctx.inputs:
        candidates += student_candidates(ctx, cfg, by_problem)
    if not rate(ctx, cfg, candidates):
        raise Stopped()
    for c in candidates:
        c["score"] = round(cfg.judgment.score(c["correct"], c.get("rv"), c.get("cd")), 4)
    write_jsonl(folder / CANDIDATES, [{"prompt": user_message(c), "completion": c["completion"], "score": c["score"],
                                           **{k: c.get(k) for k in ("id", "problem_id", "source", "correct", "rv", "cd")}}
                                          for c in candidates])
    pairs = make_pairs(cfg, candidates)
    write_jsonl(folder / PAIRS, pairs)
    train_pairs = [p for p in pairs if p["split"] == "train"]
    eval_pairs = [p for p in pairs if p["split"] == "eval"]
    kinds = defaultdict(int)
    for p in pairs:
        kinds[p["kind"]] += 1
    wrong = sum(not c["correct"] for c in candidates)
    log(f"reward-model: {len(candidates)} candidates ({wrong} wrong) for {len(by_problem)} problems; "
        f"{len(pairs)} pairs ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}); "
        f"{len(train_pairs)} to train, {len(eval_pairs)} held out")
    if not train_pairs or not eval_pairs:
        raise JobError("too few preference pairs: candidates of a problem must differ in correctness or length fit; "
                       "add verbosity levels to generate, a `student` input, or lower min_margin")
    (folder / DONE).write_text(json.dumps({"candidates": len(candidates), "pairs": len(pairs)}))


def train(ctx: JobContext, cfg: RewardModelConfig, train_pairs: list[dict], eval_pairs: list[dict],
          candidates: list[dict]) -> bool:
    from pai_distil.core.presets import trains_like_preset

    from pai_distil_jobs.train.reward import load_reward_model
    from pai_distil_jobs.train.reward import encode, reward_trainer, save_whole
    from pai_distil_jobs.train.sharded_load import load_trained, model_hidden_size, parameter_count
    from pai_distil_jobs.train.trainer import TrainSettings, fit, training_arguments

    say = log if ctx.is_main_process else (lambda _: None)  # one log line per job, not one per rank
    if "base" in ctx.inputs:
        source = str(ctx.input("base"))
    else:
        source = str(ctx.input("student")) if cfg.init_from_student else cfg.model.model
    t, filled = by_kind_here(cfg.train, trains_like_preset(source))
    if filled:
        say("defaults applied: " + ", ".join(f"train.{k}={v}" for k, v in filled.items()))
    settings = TrainSettings.of(t, hidden_size=model_hidden_size(source))
    args = training_arguments(settings, ctx.checkpoint_dir, len(train_pairs))  # before the model: see sharded_load
    model, tokenizer = load_reward_model(source, seed=cfg.model.seed, likelihood_weight=cfg.likelihood_weight,
                                         likelihood=cfg.likelihood, load=partial(load_trained, args=args))
    examples = [{"chosen": encode(tokenizer, p["prompt"], p["chosen"], t.max_length),
                 "rejected": encode(tokenizer, p["prompt"], p["rejected"], t.max_length),
                 "chosen_score": p["chosen_score"], "rejected_score": p["rejected_score"]} for p in train_pairs]
    say(f"reward model from {source}: {parameter_count(model) / 1e6:.2f}M parameters, "
        f"score = head + {model.likelihood_weight:g} x log-likelihood ({model.likelihood} per response), "
        f"language-model loss x {t.lm_weight:g}; {t.max_steps} steps of {t.batch_size} pairs")
    trainer, callback = reward_trainer(model, tokenizer, examples, settings, ctx.checkpoint_dir, ctx.metrics_path,
                                       regression_weight=t.regression_weight, lm_weight=t.lm_weight,
                                       tensorboard=ctx.output if ctx.is_main_process and "tensorboard" in t.report_to
                                       else None, log=say, args=args)
    say(f"training on {trainer.args.device} ({'bf16' if trainer.args.bf16 else 'fp32'}): batch {t.batch_size} = "
        f"{trainer.args.per_device_train_batch_size} x {trainer.args.gradient_accumulation_steps} accumulation")
    if not fit(trainer, callback, ctx.checkpoint_dir, log=say):
        return False
    save_whole(trainer, ctx.output)  # every rank: ZeRO-3 / FSDP gather the shards, rank 0 writes
    if not ctx.is_main_process:
        return True
    if trainer.args.bf16:  # trained in bf16: saved in it, the head too (fp32 stays on CPU presets)
        from pai_distil_jobs.models.precision import cast_checkpoint

        cast_checkpoint(ctx.output, "bfloat16")
    steps = trainer.state.global_step
    trainer.accelerator.free_memory()  # the optimizer's state and this rank's shards: the scorer needs the room
    del trainer, model
    report_held_out(ctx, t.max_length, train_pairs, eval_pairs, candidates, steps)
    return True


def report_held_out(ctx: JobContext, max_length: int, train_pairs: list[dict], eval_pairs: list[dict],
                    candidates: list[dict], steps: int) -> None:
    """Pairwise accuracy on the held-out pairs and the score statistics GRPO standardises with
    (`reward_stats.json`), from the saved model as a scorer loads it. Rank 0 alone, after training:
    the whole model fits one GPU for scoring where its training state did not."""
    from pai_distil_jobs.train.reward import STATS, RewardScorer, score_texts

    scorer = RewardScorer(ctx.output, max_length=max_length)
    model, tokenizer = scorer.model, scorer.tokenizer
    prompts = [p["prompt"] for p in eval_pairs]
    chosen = score_texts(model, tokenizer, prompts, [p["chosen"] for p in eval_pairs], max_length)
    rejected = score_texts(model, tokenizer, prompts, [p["rejected"] for p in eval_pairs], max_length)
    margins = [c - r for c, r in zip(chosen, rejected)]
    held = {p["problem_id"] for p in eval_pairs}
    held_cands = [c for c in candidates if c["problem_id"] in held]
    raw = score_texts(model, tokenizer, [c["prompt"] for c in held_cands], [c["completion"] for c in held_cands],
                      max_length)
    mean = sum(raw) / len(raw)
    std = (sum((r - mean) ** 2 for r in raw) / len(raw)) ** 0.5 or 1.0
    (ctx.output / STATS).write_text(json.dumps({"mean": mean, "std": std, "max_length": max_length}, indent=1))
    table = accuracy_table(eval_pairs, margins)
    report = {"held_out_pairs": table, "train_pairs": len(train_pairs), "steps": steps,
              "candidates": len(candidates), "wrong_candidates": sum(not c["correct"] for c in candidates),
              "score_stats": {"mean": mean, "std": std}}
    (ctx.output / REPORT).write_text(json.dumps(report, indent=1))
    kinds = ", ".join(f"{k} {v['accuracy']:.1%} of {v['pairs']}" for k, v in table["by_kind"].items())
    levels = ", ".join(f"level {k} {v['accuracy']:.1%}" for k, v in table["by_level"].items())
    log(f"held-out pairwise accuracy {table['overall']['accuracy']:.1%} of {table['overall']['pairs']} pairs "
        f"({kinds}; {levels})")
