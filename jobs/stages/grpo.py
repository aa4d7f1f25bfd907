"""grpo: reinforcement learning of the `student` input with group-relative advantages.

reward = rm_weight * (standardised reward-model score) + correct_weight * (verified correctness)
- overlong_penalty * (cut at max_completion_length) - format_penalty * (no readable final answer).
The reward model is the `reward_model` input loaded in-process, or a served one
(`reward.endpoint`); the KL reference is the starting checkpoint. Training is TRL's GRPOTrainer
(`lib/grpo.py`) with rollouts through transformers or vLLM (`rollout`). Every step logs mean reward,
accuracy, mean length, the shares of cut and answerless completions and KL to metrics.jsonl;
summary.json compares the first and the last steps, so exploitation of the reward model (reward
up, accuracy flat or down, length drifting) is visible at a glance.
"""

from __future__ import annotations

import json
import os

from pai_distil.core.artifacts import REWARD_HEAD
from pai_distil.core.config import GRPOConfig

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.code_sandbox import open_sandbox
from pai_distil_jobs.data.problems import load_problems
from pai_distil_jobs.endpoints.prompts import user_message

WINDOW = 10  # steps averaged at the start and at the end for summary.json


def _scorer(ctx: JobContext, cfg: GRPOConfig):
    if cfg.reward.rm_weight == 0:
        return None, "none"
    if cfg.reward.endpoint is not None:
        from pai_distil_jobs.endpoints.reward_client import RemoteScorer

        return RemoteScorer(cfg.reward.endpoint), cfg.reward.endpoint.base_url
    from pai_distil_jobs.train.reward import RewardScorer

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
    """GRPO on every process torchrun started: each reads the same problems in the same order, TRL splits each
    step's completions over the processes (rollouts, rewards and the loss alike) and gathers the rewards for
    the group advantages; rank 0 alone logs, writes metrics and the summary."""
    cfg = ctx.parsed_config(GRPOConfig)
    if cfg.rollout == "vllm":
        from pai_distil_jobs.models.generation import require_vllm

        require_vllm("rollout: vllm", "rollout: hf")
    import datasets

    from pai_distil.core.presets import trains_like_preset

    from pai_distil_jobs.models.chat_template import OPENED_THINK
    from pai_distil_jobs.models.models import load_tokenizer, set_generation_stops
    from pai_distil_jobs.train.grpo import COMPLETIONS, GroupRewards, grpo_arguments, grpo_trainer_class
    from pai_distil_jobs.train.sft_train import job_callbacks, lora_config, save_final, say_defaults
    from pai_distil_jobs.train.sharded_load import load_policy_and_reference, model_hidden_size
    from pai_distil_jobs.train.trainer import TrainSettings, by_kind_here, fit

    datasets.disable_progress_bars()
    rank = int(os.environ.get("RANK", "0"))
    say = log if rank == 0 else (lambda m: None)
    student = ctx.input("student")
    rows = load_problems(cfg.problems, ctx.inputs.get("problems"), prefix="grpo", data=cfg.data)
    if not rows:
        raise JobError("no training problems; check `problems` or the `problems` input")
    limits, _ = open_sandbox(cfg.sandbox, rows, "grpo")
    preset = trains_like_preset(str(student))
    t, filled = by_kind_here(cfg.train, preset)
    say_defaults(filled, preset, say)
    try:  # the model loads after the arguments, into its sharded layout (sharded_load)
        tokenizer = load_tokenizer(student)
        hidden = model_hidden_size(student)
    except OSError as e:
        raise JobError(f"input 'student' ({student}) cannot be loaded: {str(e).splitlines()[0]}") from None
    kw = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
    examples, prompt_tokens = [], 0
    for row in rows:
        prompt = user_message(row, cfg.user_prompt)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True, **kw)
        prompt_tokens = max(prompt_tokens, len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
        opened = OPENED_THINK.search(rendered)
        examples.append({**row, "prompt": prompt, "opened": rendered[opened.start():] if opened else ""})
    settings = TrainSettings.of(t, batch_size=t.prompts_per_step * cfg.group_size, hidden_size=hidden)
    scorer, scorer_name = _scorer(ctx, cfg)
    weights = GroupRewards.weights(cfg, scorer is not None)
    args = grpo_arguments(cfg, settings, ctx.checkpoint_dir, len(examples), weights, prompt_tokens)
    try:
        model, reference = load_policy_and_reference(student, args, seed=t.seed, lora=bool(t.lora),
                                                     reference=cfg.kl_coef > 0)
    except OSError as e:
        raise JobError(f"input 'student' ({student}) cannot be loaded: {str(e).splitlines()[0]}") from None
    set_generation_stops(model, tokenizer)  # rollouts end at the template's end of turn as well as eos
    stops = model.generation_config.eos_token_id
    stops = sorted({*(stops if isinstance(stops, list) else [stops]), tokenizer.eos_token_id} - {None})
    funcs, _ = GroupRewards(examples, cfg, tokenizer, stops, scorer, limits=limits, log=say).functions()
    w = cfg.reward
    say(f"grpo: {len(examples)} problems, {t.max_steps} steps of {t.prompts_per_step} problems x {cfg.group_size} "
        f"completions (max {cfg.max_completion_length} tokens) on {args.world_size} processes ({args.device}, "
        f"{'bf16' if args.bf16 else 'fp32'}, policy loaded in {str(model.dtype).removeprefix('torch.')}, reference "
        f"{_dtype_of(reference, t.lora, cfg.kl_coef)}; {args.per_device_train_batch_size} completions a micro-batch x "
        f"{args.gradient_accumulation_steps} accumulation, {cfg.rollout} rollouts, loss {cfg.loss_type}); "
        f"reward = {w.rm_weight:g} x reward model ({scorer_name}) + {w.correct_weight:g} x correctness; "
        f"KL coefficient {cfg.kl_coef:g}")
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": e["prompt"]}], "index": i}
                                          for i, e in enumerate(examples)])
    callback, callbacks = job_callbacks(ctx, t, tokenizer, rank, say)
    trainer = grpo_trainer_class()(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=callbacks, reference=reference,
                                   peft_config=lora_config(t.lora) if t.lora else None)
    trainer.job = settings
    trainer.completions_path = ctx.output / COMPLETIONS
    if t.fsdp and not trainer.is_fsdp_enabled:
        raise JobError("train.fsdp needs GPUs (accelerate runs FSDP on multi-GPU nodes only); on CPUs drop it "
                       "or use train.deepspeed")
    if t.fsdp or t.deepspeed:
        say("sharding: " + (f"FSDP2 {t.fsdp.sharding}" if t.fsdp else f"DeepSpeed ZeRO-{t.deepspeed.stage}"))
    if not fit(trainer, callback, ctx.checkpoint_dir, log=say):
        return False
    save_final(trainer, tokenizer, ctx, t)
    if rank == 0:
        _write_summary(ctx, cfg, str(student))
    return True


def _dtype_of(reference, lora, kl_coef: float) -> str:
    if reference is not None:
        return f"in {str(reference.dtype).removeprefix('torch.')}"
    return "the policy with its adapter off" if lora and kl_coef else "none (kl_coef 0)"


def _write_summary(ctx: JobContext, cfg: GRPOConfig, student: str) -> None:
    records = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines() if line.strip()]
    summary = {**summarize(records), "student": student, "reward": cfg.reward.model_dump(mode="json"),
               "kl_coef": cfg.kl_coef, "group_size": cfg.group_size, "loss_type": cfg.loss_type}
    (ctx.output / "summary.json").write_text(json.dumps(summary, indent=1))
    a, b = summary["first_steps"], summary["last_steps"]
    log(f"grpo: accuracy {a['accuracy']:.1%} -> {b['accuracy']:.1%}, mean length {a['length']:.0f} -> "
        f"{b['length']:.0f} tokens, reward {a['reward']:.3f} -> {b['reward']:.3f} (first vs last {WINDOW} steps)")
