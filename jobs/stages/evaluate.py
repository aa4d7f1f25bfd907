"""evaluate: greedy decoding of held-out problems; accuracy and output tokens per model and level."""

from __future__ import annotations

import json
import time

from pydantic import ValidationError

from pai_distil import report as reports
from pai_distil.specs import EvaluateConfig, explain
from pai_distil.verifiers import verify

from ..contract import JobContext, JobError, log
from ..lib.generation import generate
from ..lib.models import load_model
from ..lib.problems import level_of, load_problems


def run(ctx: JobContext) -> None:
    try:
        cfg = EvaluateConfig.model_validate(ctx.config)
    except ValidationError as e:
        raise JobError(explain(e, "evaluate config")) from None
    problems = load_problems(cfg.problems, ctx.inputs.get("problems"), prefix="eval")
    log(f"evaluate: {len(problems)} problems, {len(cfg.models)} models")
    results, predictions = [], []
    for m in cfg.models:
        source = str(ctx.input(m.input)) if m.input else m.model
        try:
            model, tokenizer = load_model(source, seed=m.seed)
        except OSError as e:
            raise JobError(f"model '{m.name}' ({source}) cannot be loaded: {str(e).splitlines()[0]}") from None
        start, done = time.time(), 0

        def progress(k: int) -> None:
            nonlocal done
            done += k
            log(f"[progress] evaluate:{m.name} {done}/{len(problems)}")

        outs = generate(model, tokenizer, [p["problem"] for p in problems], cfg.max_new_tokens,
                        batch_size=cfg.batch_size, on_batch=progress)
        records = []
        for p, o in zip(problems, outs):
            rec = {"model": m.name, "id": p["id"], "level": level_of(p), "correct": verify(p, o["text"]),
                   "tokens": o["tokens"], "truncated": o["truncated"], "response": o["text"]}
            records.append(rec)
        predictions += records
        summary = reports.summarize(records)
        results.append({"name": m.name, "model": source, **summary, "seconds": round(time.time() - start, 1)})
        levels = ", ".join(f"level {lv} {s['accuracy']:.1%}" for lv, s in summary["levels"].items())
        log(f"{m.name}: accuracy {summary['overall']['accuracy']:.1%} ({levels}), "
            f"mean output tokens {summary['overall']['mean_tokens']:.1f}")
        del model
    report = {"n_problems": len(problems), "models": results}
    (ctx.output / reports.REPORT).write_text(json.dumps(report, indent=1))
    with open(ctx.output / "predictions.jsonl", "w") as f:
        for r in predictions:
            f.write(json.dumps(r) + "\n")
