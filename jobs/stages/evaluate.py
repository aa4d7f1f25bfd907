"""evaluate: every model answers held-out problems; pass@1, output tokens per model, level and source.

A model is a checkpoint (decoded here through its chat template, greedy or sampled) or an
OpenAI-compatible endpoint (asked with bounded concurrency). Both give the same records, judged
by the row's verifier (math, multiple choice, code in the sandbox, synthetic). Output:
report.json, predictions.jsonl and report.png.
"""

from __future__ import annotations

import json
import time


from pai_distil.core import report as reports
from pai_distil.core.config import EvalModel, EvaluateConfig
from pai_distil.core.think import SOFT_NO_THINK
from pai_distil.core.verifiers import check, verifier_for
from pai_distil.core.verify.sandbox import Limits

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.code_sandbox import open_sandbox
from pai_distil_jobs.data.problems import level_of, load_problems, source_of
from pai_distil_jobs.endpoints.prompts import user_message


def run(ctx: JobContext) -> None:
    cfg = ctx.parsed_config(EvaluateConfig)
    problems = load_problems(cfg.problems, ctx.inputs.get("problems"), prefix="eval", data=cfg.data)
    jobs = [(p, k) for p in problems for k in range(cfg.samples)]  # problem-major: samples of one problem together
    prompts = [user_message(p, cfg.user_prompt) for p, _ in jobs]
    sources = sorted({source_of(p) for p in problems})
    log(f"evaluate: {len(problems)} problems ({', '.join(sources)}) x {cfg.samples} sample(s), {len(cfg.models)} models")
    limits, sandbox = open_sandbox(cfg.sandbox, problems, "evaluate")
    switches = {m.name: thinking_off_switch(ctx, m, i) for i, m in enumerate(cfg.models)
                if m.enable_thinking is False and m.endpoint is None}  # before any model decodes for an hour

    results, predictions = {}, {}
    # Served models first: a wrong URL or key then fails in seconds, not after an hour of local decoding.
    for m in sorted(cfg.models, key=lambda m: m.endpoint is None):
        start = time.time()
        outs, source = _answers(ctx, cfg, m, prompts, switches.get(m.name))
        predictions[m.name] = _judge(m, jobs, outs, limits)
        summary = reports.summarize(predictions[m.name])
        results[m.name] = {"name": m.name, "model": source, "kind": "endpoint" if m.endpoint else "checkpoint",
                           "enable_thinking": m.enable_thinking,
                           **({"thinking_off": SOFT_NO_THINK.strip()} if switches.get(m.name) == "soft" else {}),
                           "max_new_tokens": m.max_new_tokens or cfg.max_new_tokens,
                           **summary, "seconds": round(time.time() - start, 1)}
        if m.input and (curve := learning_curve(ctx.input(m.input))):
            results[m.name]["curve"] = curve
        levels = ", ".join(f"level {lv} {s['accuracy']:.1%}" for lv, s in summary["levels"].items())
        log(f"{reports.label(results[m.name])}: accuracy {summary['overall']['accuracy']:.1%} ({levels}), "
            f"mean output tokens {summary['overall']['mean_tokens']:.1f}")

    report = {"n_problems": len(problems), "samples": cfg.samples, "temperature": cfg.temperature,
              "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "sources": sources,
              "models": [results[m.name] for m in cfg.models]}
    if sandbox:
        report["sandbox"] = {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, "isolation": sandbox}
    (ctx.output / reports.REPORT).write_text(json.dumps(report, indent=1))
    with open(ctx.output / "predictions.jsonl", "w") as f:
        for m in cfg.models:
            for r in predictions[m.name]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    reports.write_chart(report, ctx.output / reports.CHART)


def learning_curve(checkpoint) -> dict | None:
    """Held-out accuracy during training (the training stage's `stop_at` checks in metrics.jsonl), by
    step, continued from the steps of the checkpoint training started from; with the final step."""
    metrics, summary = checkpoint / "metrics.jsonl", checkpoint / "training_summary.json"
    if not metrics.is_file() or not summary.is_file():
        return None
    done = json.loads(summary.read_text())
    start = int(done.get("start_step", 0))
    points = [[start + r["step"], r["heldout_accuracy"]] for r in map(json.loads, metrics.read_text().splitlines())
              if "heldout_accuracy" in r]
    return {"steps": points, "final_step": start + int(done.get("steps", 0))} if points else None


def _judge(m: EvalModel, jobs: list[tuple[dict, int]], outs: list[dict], limits: Limits) -> list[dict]:
    """One prediction record per (problem, sample), with the verifier's verdict."""
    records = []
    for (p, k), o in zip(jobs, outs, strict=True):
        verdict = check(p, o["text"], limits)
        is_code = verifier_for(p) == "code"
        rec = {"model": m.name, "id": p["id"], "sample": k, "level": level_of(p), "source": source_of(p),
               "correct": verdict.correct, "tokens": o["tokens"], "truncated": o["truncated"],
               "extracted": None if is_code else verdict.extracted, "response": o["text"]}
        if is_code:
            rec["cases"] = [c["status"] for c in verdict.details.get("cases", [])]
        records.append(rec)
    return records


def thinking_off_switch(ctx: JobContext, m: EvalModel, i: int) -> str:
    """How checkpoint `m` turns thinking off (`thinking_switch`): "template", or "soft" (`/no_think` in the
    prompt, as it was trained); JobError where nothing switches, which would report the thinking-on model
    twice under two names. `validate` checks local folders; this checks hub ids and stage inputs too."""
    from pai_distil_jobs.models.chat_template import thinking_switch
    from pai_distil_jobs.models.models import load_tokenizer

    source = str(ctx.input(m.input)) if m.input else m.model
    try:
        switch = thinking_switch(load_tokenizer(source), source)
    except OSError as e:
        raise JobError(f"model '{m.name}' ({source}) cannot be loaded: {str(e).splitlines()[0]}") from None
    if switch is None:
        raise JobError(f"models[{i}] ({m.name!r}) sets enable_thinking: false, but the chat template of {source} "
                       "renders the same prompt with true and false and it was not trained with /no_think, so it "
                       "would answer as with thinking on; drop enable_thinking for it, or evaluate a student with a "
                       "thinking switch (adaptive-thinking variant y)")
    if switch == "soft":
        log(f"{m.name}: the chat template of {source} ignores enable_thinking; thinking is turned off with "
            "/no_think in the prompt, as it was trained")
    return switch


def _answers(ctx: JobContext, cfg: EvaluateConfig, m: EvalModel, prompts: list[str],
             switch: str | None = None) -> tuple[list[dict], str]:
    """The model's completions of `prompts` ({"text", "tokens", "truncated"}) and what it was; `switch`
    "soft": thinking off is `/no_think` at the end of each prompt, not the template's flag."""
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if m.endpoint is None or done == len(prompts) or done % max(1, len(prompts) // 10) == 0:
            log(f"[progress] evaluate:{m.name} {done}/{len(prompts)}")

    kw = {"temperature": cfg.temperature, "top_p": cfg.top_p, "enable_thinking": m.enable_thinking}
    budget = m.max_new_tokens or cfg.max_new_tokens
    if m.endpoint is not None:
        from pai_distil_jobs.endpoints import endpoint

        outs = endpoint.sample(m.endpoint, m.name, prompts, max_tokens=budget, seed=cfg.seed, on_done=progress, **kw)
        return outs, f"{m.endpoint.base_url} ({m.endpoint.model})"

    import torch

    from pai_distil_jobs.models.generation import generate
    from pai_distil_jobs.models.models import load_for_inference

    source = str(ctx.input(m.input)) if m.input else m.model
    try:
        model, tokenizer = load_for_inference(source, seed=m.seed)
    except OSError as e:
        raise JobError(f"model '{m.name}' ({source}) cannot be loaded: {str(e).splitlines()[0]}") from None
    if switch == "soft":
        prompts, kw = [p + SOFT_NO_THINK for p in prompts], {**kw, "enable_thinking": None}
    torch.manual_seed(cfg.seed)
    outs = generate(model, tokenizer, prompts, budget, batch_size=cfg.batch_size, on_batch=progress, **kw)
    del model
    return outs, source
