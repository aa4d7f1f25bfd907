"""Stage `generate`: ask an OpenAI-compatible teacher for chains of thought, verify the answers.

Every (problem, verbosity) pair is one request. With `refine`, the input holds CoTs instead and
every (CoT, verbosity) pair asks the teacher to rewrite that chain shorter or longer. Each answer is appended to `cots.jsonl` as soon
as it arrives, so a killed or failed job loses nothing: a rerun reads the file and asks only for
what is missing. At the end the verified-correct samples become `sft.jsonl` (OpenAI messages)
and `summary.json` says how good the teacher was.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import openai

from pai_distil.core import verifiers
from pai_distil.core.config import GenerateConfig
from pai_distil.core import world
from pai_distil.core.think import split_thought, think_block
from pai_distil.core.verify.sandbox import Limits

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data import problems
from pai_distil_jobs.data.cot_data import read_cots
from pai_distil_jobs.endpoints import prompts
from pai_distil_jobs.data.code_sandbox import open_sandbox
from pai_distil_jobs.endpoints.resumable import NotACompletion, Stopped, explain_failure, load_done, message_of, pending, run_pool

COTS = "cots.jsonl"
SFT = "sft.jsonl"
SUMMARY = "summary.json"
MIN_ANSWERS_FOR_BAD_CHECK = 20
DEFAULT_SYSTEM_PROMPT = (
    "You are a careful reasoner. Think step by step inside <think>...</think>, then give the final "
    "answer in \\boxed{{}}. Reasoning verbosity level {verbosity} on a 0-9 scale "
    "(0: answer directly, 9: reason at great length, checking every step)."
)


# -- problems -----------------------------------------------------------------------------------


def load_problems(ctx: JobContext, config: GenerateConfig) -> list[dict]:
    """Problems in the docs/architecture.md format, from the synthetic world or the `problems` input; with
    `refine`, the CoT samples of the `problems` input."""
    if config.problems is None and "problems" not in ctx.inputs:
        raise JobError("generate has no problems: set `problems` in the config (synthetic world) "
                       "or pass --input problems=FILE.jsonl")
    path = ctx.input("problems") if config.problems is None else None
    if config.refine is not None:
        if path is None:
            raise JobError("refine rewrites existing chains of thought: pass them as --input problems=COTS "
                           "(generate's output, OmniThought-style rows or messages) instead of `problems`")
        rows = read_cots(path, "problems", config.data, own_rows=False)  # rewritten as published samples
        if not rows:
            raise JobError(f"input 'problems' ({path}) holds no chains of thought to refine")
        return rows
    return problems.load_problems(config.problems, path, data=config.data)


def sample_id(problem: dict, rv: int, config: GenerateConfig | None = None) -> str:
    if config is not None and config.refine is not None:
        return f"{problem['id']}-{config.refine.direction}-rv{rv}"
    return f"{problem['id']}-rv{rv}"


def system_prompt(config: GenerateConfig, rv: int, problem: dict | None = None) -> str:
    if config.system_prompt is not None:
        return config.system_prompt.replace("{verbosity}", str(rv))
    if problem is not None and verifiers.verifier_for(problem) != world.DOMAIN:
        return prompts.REASONING_SYSTEM.format(verbosity=rv)
    return DEFAULT_SYSTEM_PROMPT.format(verbosity=rv)


def user_message(config: GenerateConfig, problem: dict, rv: int) -> str:
    if config.refine is not None:
        return prompts.refine_message(problem, config.refine.direction, rv, config.refine.prompt)
    return prompts.user_message(problem, config.user_prompt)


# Fields of a problem row that travel into its CoT samples (what later stages need to verify them).
CARRIED = ("domain", "verifier", "source", "choices", "fn_name")


# -- talking to the teacher ---------------------------------------------------------------------


def read_completion(resp) -> tuple[str, str, str | None, int | None]:
    """(thought, solution, finish_reason, completion_tokens) of a chat completion.

    Reasoning comes inline (`<think>…</think>` in content) or in `reasoning_content` / `reasoning`
    (DeepSeek, vLLM's reasoning parsers).
    """
    choice, message, usage = message_of(resp)
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    thought, solution = split_thought(message.get("content") or "")
    if reasoning:
        thought = "\n".join(t for t in (reasoning.strip(), thought) if t)
    return thought, solution, choice.get("finish_reason"), usage.get("completion_tokens")


# -- the run ------------------------------------------------------------------------------------


class Generation:
    """Asks the teacher for every missing (problem, verbosity) pair; the shared worker pool appends the answers."""

    def __init__(self, config: GenerateConfig, out: Path, total: int, done: int, limits: Limits):
        self.config = config
        self.limits = limits  # of each run of a code answer
        self.out = out
        self.total = total
        self.done = done
        self.answered = 0  # answers received by this run
        self.unboxed = 0  # ... of which had no \boxed{} answer

    async def run(self, todo: list[tuple[dict, int]]) -> None:
        await run_pool(todo, lambda client, item: self.ask(client, *item), self.config.teacher, self.out, "generate",
                       total=self.total, done=self.done, on_row=self.answer)

    def answer(self, row: dict) -> None:
        self.done += 1
        self.answered += 1
        self.unboxed += verifiers.extract(row, row["solution"]) is None
        self.check_parseable()

    async def ask(self, client: openai.AsyncOpenAI, problem: dict, rv: int) -> dict:
        t = self.config.teacher
        try:
            resp = await client.chat.completions.create(
                model=t.model, max_tokens=t.max_tokens, temperature=t.temperature,
                messages=[{"role": "system", "content": system_prompt(self.config, rv, problem)},
                          {"role": "user", "content": user_message(self.config, problem, rv)}])
            thought, solution, finish, tokens = read_completion(resp)
        except (openai.OpenAIError, NotACompletion, ValueError) as e:
            raise JobError(explain_failure(e, self.config.teacher)) from None
        refine = self.config.refine
        row = {
            "id": sample_id(problem, rv, self.config),
            "problem_id": problem.get("problem_id", problem["id"]) if refine else problem["id"],
            "problem": problem["problem"], "answer": problem.get("answer", ""), "thought": thought,
            "solution": solution, "teacher": t.model, "correct": await self.check(problem, solution),
            "rv": None, "cd": None, "requested_rv": rv, "finish_reason": finish,
            "truncated": finish == "length", "max_tokens": t.max_tokens,
            "completion_tokens": tokens, "meta": problem.get("meta") or {},
        }
        row.update({k: problem[k] for k in CARRIED if problem.get(k) is not None})
        if refine is not None:
            row.update(refined_from=problem["id"], refine=refine.direction,
                       original_words=len((problem.get("thought") or "").split()))
        return row

    async def check(self, problem: dict, solution: str) -> bool:
        """The verdict; code runs in a worker thread so the other requests keep flowing meanwhile."""
        if problem.get("answer") in (None, "") and not problem.get("tests"):
            return False  # e.g. a CoT row without a reference answer: nothing to check against
        if verifiers.verifier_for(problem) == "code":
            verdict = await asyncio.to_thread(verifiers.check, problem, solution, self.limits)
        else:
            verdict = verifiers.check(problem, solution, self.limits)
        return verdict.correct

    def check_parseable(self) -> None:
        n = self.answered
        if n < MIN_ANSWERS_FOR_BAD_CHECK and self.done < self.total:
            return
        if self.unboxed > self.config.max_bad_fraction * n:
            raise JobError(
                f"the teacher's answers cannot be parsed: {self.unboxed} of {n} have no final answer "
                f"(\\boxed{{}}, letter or code block) "
                f"(max_bad_fraction {self.config.max_bad_fraction:g}); check teacher.model "
                f"({self.config.teacher.model!r}) and system_prompt, or raise teacher.max_tokens if answers are cut off")


def run(ctx: JobContext) -> bool | None:
    config = ctx.parsed_config(GenerateConfig)
    problems = load_problems(ctx, config)
    out = ctx.output / COTS
    ctx.output.mkdir(parents=True, exist_ok=True)
    wanted = [(p, rv) for p in problems for rv in config.verbosity]
    _, todo = pending(wanted, lambda item: sample_id(*item, config), out)
    resumed = len(wanted) - len(todo)
    if resumed:
        log(f"generate: resuming, {resumed} of {len(wanted)} samples already in {COTS}")
    what = f"{config.refine.direction} rewrites of {len(problems)} chains" if config.refine else f"{len(problems)} problems"
    log(f"generate: asking teacher {config.teacher.model!r} at {config.teacher.base_url} for {len(todo)} "
        f"chains of thought ({what} x verbosity {config.verbosity})")

    limits, _ = open_sandbox(config.sandbox, [p for p, _ in todo], "generate")
    gen = Generation(config, out, total=len(wanted), done=resumed, limits=limits)
    try:
        asyncio.run(gen.run(todo))
    except Stopped:
        log(f"generate: stopped by SIGTERM after {gen.done}/{gen.total}; rerun to resume")
        return False

    rows_by_id = load_done(out)
    rows = [rows_by_id[sample_id(p, rv, config)] for p, rv in wanted]
    _rewrite_in_order(out, rows)
    summary = finish(ctx.output, rows, config, resumed=resumed, requested=len(todo))
    log(f"generate: {summary['samples']} samples ({resumed} resumed), teacher accuracy "
        f"{summary['teacher_accuracy']:.1%}, {summary['unparseable']} without a final answer, "
        f"{summary['truncated']} cut off at max_tokens, {summary['sft_rows']} rows in {SFT}")
    return None


def _rewrite_in_order(path: Path, rows: list[dict]) -> None:
    """cots.jsonl in the problems' order, not the answers' arrival order: the same inputs then give
    the same bytes (and the same training batches) on every run and backend."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def finish(output: Path, rows: list[dict], config: GenerateConfig, **counts: int) -> dict:
    """Write sft.jsonl (verified-correct samples) and summary.json; return the summary."""
    with open(output / SFT, "w", encoding="utf-8") as f:
        for r in rows:
            if r["correct"]:
                assistant = think_block(r['thought'], r['solution'])
                f.write(json.dumps({"messages": [{"role": "user", "content": prompts.user_message(r, config.user_prompt)},
                                                 {"role": "assistant", "content": assistant}]},
                                   ensure_ascii=False) + "\n")
    per_level: dict[str, Counter] = defaultdict(Counter)
    per_rv: dict[str, Counter] = defaultdict(Counter)
    per_source: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        unparseable = verifiers.extract(r, r["solution"]) is None
        buckets = [per_level[str((r.get("meta") or {}).get("level", "none"))], per_rv[str(r["requested_rv"])]]
        if r.get("source"):
            buckets.append(per_source[str(r["source"])])
        for bucket in buckets:
            bucket.update(samples=1, correct=int(r["correct"]), unparseable=int(unparseable),
                          truncated=int(bool(r.get("truncated"))), completion_tokens=r.get("completion_tokens") or 0)
    correct = sum(r["correct"] for r in rows)
    summary = {
        "teacher": config.teacher.model,
        "base_url": config.teacher.base_url,
        "samples": len(rows),
        **counts,
        "correct": correct,
        "teacher_accuracy": correct / len(rows) if rows else 0.0,
        "unparseable": sum(c["unparseable"] for c in per_level.values()),
        "truncated": sum(c["truncated"] for c in per_level.values()),
        "max_tokens": config.teacher.max_tokens,
        "refine": config.refine.direction if config.refine else None,
        "sft_rows": correct,
        "per_level": {k: dict(v) for k, v in sorted(per_level.items())},
        "per_verbosity": {k: dict(v) for k, v in sorted(per_rv.items(), key=lambda kv: int(kv[0]))},
        "per_source": {k: dict(v) for k, v in sorted(per_source.items())},
    }
    (output / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary
