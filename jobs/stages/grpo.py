"""grpo: reinforcement learning of the `student` input with group-relative advantages.

reward = rm_weight * (standardised reward-model score) + correct_weight * (verified correctness)
- overlong_penalty * (cut at max_completion_length) - format_penalty * (no readable final answer).
The reward model is the `reward_model` input loaded in-process, or a served one
(`reward.endpoint`); the KL reference is the starting checkpoint. Every step logs mean reward,
accuracy, mean length, the shares of cut and answerless completions and KL to metrics.jsonl;
summary.json compares the first and the last steps, so exploitation of the reward model (reward
up, accuracy flat or down, length drifting) is visible at a glance.
"""

from __future__ import annotations

import json

from pai_distil.artifacts import REWARD_HEAD
from pai_distil.specs import GRPOConfig
from pai_distil.verify import sandbox

from ..contract import JobContext, JobError, log
from ..lib.code_sandbox import open_sandbox
from ..lib.problems import load_problems
from ..lib.prompts import user_message

WINDOW = 10  # steps averaged at the start and at the end for summary.json


def _scorer(ctx: JobContext, cfg: GRPOConfig):
    if cfg.reward.rm_weight == 0:
        return None, "none"
    if cfg.reward.endpoint is not None:
        from ..lib.reward_client import RemoteScorer

        return RemoteScorer(cfg.reward.endpoint), cfg.reward.endpoint.base_url
    from ..lib.reward import RewardScorer

    path = ctx.input("reward_model")
    if not (path / REWARD_HEAD).exists():
        raise JobError(f"input 'reward_model' ({path}) is not a reward model checkpoint (no {REWARD_HEAD}); "
                       "pass the output of the reward-model stage")
    return RewardScorer(path).score, str(path)


def summarize(records: list[dict]) -> dict:
    def mean(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    keys = ("reward", "accuracy", "length", "truncated", "no_answer", "kl", "rm_score")
    first, last = records[:WINDOW], records[-WINDOW:]
    return {"steps": records[-1]["step"] if records else 0,
            "first_steps": {k: mean(first, k) for k in keys}, "last_steps": {k: mean(last, k) for k in keys}}


def run(ctx: JobContext) -> bool:
    cfg = ctx.parsed_config(GRPOConfig)
    import torch

    from ..lib.grpo import GRPOTrainer
    from ..lib.models import load_model
    from ..lib.legacy_loop import TrainSettings

    student = ctx.input("student")
    rows = load_problems(cfg.problems, ctx.inputs.get("problems"), prefix="grpo", data=cfg.data)
    if not rows:
        raise JobError("no training problems; check `problems` or the `problems` input")
    limits, _ = open_sandbox(cfg.sandbox, rows, "grpo")
    sandbox.set_default(limits)  # the rollouts ask the verifier without limits of their own
    try:
        model, tokenizer = load_model(student)
        reference, _ = load_model(student)
    except OSError as e:
        raise JobError(f"input 'student' ({student}) cannot be loaded: {str(e).splitlines()[0]}") from None
    reference.eval().requires_grad_(False)
    scorer, scorer_name = _scorer(ctx, cfg)
    kw = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
    examples = []
    for row in rows:
        prompt = user_message(row, cfg.user_prompt)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True, **kw)
        examples.append({**row, "prompt": prompt,
                         "prompt_ids": tokenizer(rendered, add_special_tokens=False)["input_ids"]})
    t, w = cfg.train, cfg.reward
    log(f"grpo: {len(examples)} problems, {t.max_steps} steps of {t.prompts_per_step} problems x {cfg.group_size} "
        f"completions (max {cfg.max_completion_length} tokens); reward = {w.rm_weight:g} x reward model ({scorer_name}) "
        f"+ {w.correct_weight:g} x correctness; KL coefficient {cfg.kl_coef:g}")
    settings = TrainSettings.of(t, batch_size=t.prompts_per_step)
    torch.manual_seed(t.seed)
    trainer = GRPOTrainer(model, tokenizer, examples, settings, ctx.checkpoint_dir, ctx.metrics_path, cfg=cfg,
                          reference=reference, scorer=scorer, log=log)
    if not trainer.train():
        return False
    model.save_pretrained(ctx.output)
    tokenizer.save_pretrained(ctx.output)
    records = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines() if line.strip()]
    summary = {**summarize(records), "student": str(student), "reward": w.model_dump(mode="json"),
               "kl_coef": cfg.kl_coef, "group_size": cfg.group_size}
    (ctx.output / "summary.json").write_text(json.dumps(summary, indent=1))
    a, b = summary["first_steps"], summary["last_steps"]
    log(f"grpo: accuracy {a['accuracy']:.1%} -> {b['accuracy']:.1%}, mean length {a['length']:.0f} -> "
        f"{b['length']:.0f} tokens, reward {a['reward']:.3f} -> {b['reward']:.3f} (first vs last {WINDOW} steps)")
    return True
