"""DPO on TRL's `DPOTrainer`: preference pairs in the student's chat template, the job contract's
guarantees, and the held-out pairwise preference the report shows.

Why rows are tokenized here and not by TRL: TRL renders the prompt alone and the prompt with each
response, and takes the response to start where the two token lists diverge. Under a template
that strips thoughts or opens `<think>` in the generation prompt (DeepSeek-R1-Distill) that
boundary is wrong, and the response loses its think block. `sft_data.encode_messages` already
finds, on every template the SFT stages handle, the tokens the student writes after the
generation prompt through the end-of-turn token; DPO trains exactly those, for the chosen and
the rejected response alike, so a policy is preferred for what it would write at inference.

The reference is the starting checkpoint, loaded a second time (with LoRA: the model with the
adapter off, as TRL does), so a resumed run compares against the same reference.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from pai_distil.core.presets import trains_like_preset
from pai_distil.core.config import DPOConfig

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.data.problems import numbered_jsonl
from pai_distil_jobs.train.sft_data import IGNORE, MaskError, encode_messages
from pai_distil_jobs.train.trainer import by_kind_here

PAIRS = "pairs.jsonl"  # the reward-model stage's preference rows
REPORT = "report.json"
FIELDS = ("prompt", "chosen", "rejected")
# TRL's metric names kept in metrics.jsonl: the implicit reward beta * log(policy / reference) of
# chosen and rejected, its margin and how often chosen wins, and the summed log-probabilities
KEPT = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
        "logps/rejected", "num_tokens"}


# -- reading ---------------------------------------------------------------------------------------


def _messages(value, role: str) -> list[dict] | None:
    """A field as chat messages: text becomes one `role` turn; a list of {"role", "content"} stays."""
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def read_pairs(path: Path) -> list[dict]:
    """Preference rows of the `pairs` input (the reward-model stage's output, or a JSONL file of
    {"prompt", "chosen", "rejected"}: text, or chat messages as TRL's conversational rows have them),
    each with `messages_chosen`, `messages_rejected` and `line`. A bad row is one line naming the file,
    the line and the field."""
    file = path / PAIRS if path.is_dir() else path
    if not file.is_file():
        raise JobError(f"input 'pairs' ({path}) holds no {PAIRS}; pass the output of the reward-model stage or a "
                       "JSONL file of {\"prompt\", \"chosen\", \"rejected\"} rows")
    rows = []
    for n, row in numbered_jsonl(file):
        for f in FIELDS:
            if f not in row:
                raise JobError(f"{file} line {n}: field '{f}' is missing; preference rows need "
                               f"{', '.join(FIELDS)}")
        prompt = _messages(row["prompt"], "user")
        turns = {f: _messages(row[f], "assistant") for f in ("chosen", "rejected")}
        for f, value in (("prompt", prompt), *turns.items()):
            if value is None:
                raise JobError(f"{file} line {n}: field '{f}' must be non-empty text or a list of chat messages "
                               f"({{\"role\", \"content\"}}), got {json.dumps(row[f])[:60]}")
        for f, value in turns.items():
            if value[-1]["role"] != "assistant":
                raise JobError(f"{file} line {n}: field '{f}' must end with an assistant message")
        rows.append({**row, "line": n, "messages_chosen": prompt + turns["chosen"],
                     "messages_rejected": prompt + turns["rejected"]})
    if not rows:
        raise JobError(f"{file} holds no preference rows")
    return rows


def split_pairs(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): the rows' own `split` where they have one (the reward-model stage holds out
    whole problems), else `eval_fraction` of the distinct prompts, drawn with `seed`."""
    if any("split" in r for r in rows):
        held = {i for i, r in enumerate(rows) if r.get("split") == "eval"}
    else:
        prompts = sorted({json.dumps(r["prompt"], sort_keys=True) for r in rows})
        random.Random(seed).shuffle(prompts)
        chosen = set(prompts[: max(1, round(len(prompts) * eval_fraction))])
        held = {i for i, r in enumerate(rows) if json.dumps(r["prompt"], sort_keys=True) in chosen}
    train = [r for i, r in enumerate(rows) if i not in held]
    evaluated = [r for i, r in enumerate(rows) if i in held]
    if not train or not evaluated:
        raise JobError(f"the pairs split into {len(train)} to train and {len(evaluated)} held out; both need rows "
                       "(give more prompts, or change eval_fraction or the rows' `split`)")
    return train, evaluated


# -- tokenizing ------------------------------------------------------------------------------------


def _last_span(labels: list[int]) -> tuple[int, int]:
    """[start, end) of the last run of trained tokens: the final assistant turn through its end of turn."""
    end = max(i for i, t in enumerate(labels) if t != IGNORE) + 1
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return start, end


def encode_pair(tokenizer, row: dict, max_length: int, eot: int) -> dict | None:
    """TRL's pre-tokenized preference row: `prompt_ids` (the conversation through the generation
    prompt), `chosen_ids` and `rejected_ids` (what the student writes after it, through the end of
    turn), and `truncated`. None when the prompt alone fills `max_length`."""
    kwargs = row.get("chat_template_kwargs")
    chosen = encode_messages(tokenizer, row["messages_chosen"], max_length, kwargs, eot=eot)
    rejected = encode_messages(tokenizer, row["messages_rejected"], max_length, kwargs, eot=eot)
    if chosen is None or rejected is None:
        return None
    (cs, ce), (rs, re) = _last_span(chosen["labels"]), _last_span(rejected["labels"])
    prompt_ids = chosen["input_ids"][:cs]
    if rejected["input_ids"][:rs] != prompt_ids:
        raise MaskError("the chat template renders the prompt differently before the chosen and the rejected "
                        "response, so they would not be compared on one prompt")
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen["input_ids"][cs:ce],
            "rejected_ids": rejected["input_ids"][rs:re], "truncated": chosen["truncated"] or rejected["truncated"]}


def encode_pairs(tokenizer, rows: list[dict], max_length: int, max_truncated: float, what: str,
                 log=print) -> list[dict]:
    """Every row encoded (see `encode_pair`) with a truncation report, the SFT stages' rules: warn above
    1 %, fail above `max_truncated`."""
    from pai_distil_jobs.models.chat_template import end_of_turn
    from pai_distil_jobs.train.sft_data import WARN_TRUNCATED

    eot = end_of_turn(tokenizer)
    if eot is None:
        raise JobError("the chat template ends an assistant turn with no special token, so chosen and rejected "
                       "responses have no end to learn; use a checkpoint whose chat template ends turns with its "
                       "end-of-turn token (such as <|im_end|>)")
    out, dropped = [], 0
    for row in rows:
        try:
            e = encode_pair(tokenizer, row, max_length, eot)
        except MaskError as err:
            raise JobError(f"pairs line {row['line']}: {err}") from None
        if e is None:
            dropped += 1
        else:
            out.append({**e, "row": row})
    if not out:
        raise JobError(f"every {what} pair's prompt is longer than train.max_length={max_length}; raise it")
    cut = sum(e["truncated"] for e in out)
    share = (cut + dropped) / len(rows)
    report = (f"truncation ({what}): {cut} of {len(rows)} pairs cut at train.max_length={max_length}"
              + (f", {dropped} dropped (the prompt alone is longer)" if dropped else ""))
    if share > max_truncated:
        raise JobError(f"{share:.1%} of the {what} pairs are longer than train.max_length={max_length} ({report}); "
                       f"raise train.max_length or train.max_truncated (now {max_truncated})")
    log(("warning: " if share > WARN_TRUNCATED else "") + report)
    return out


# -- held-out preference ---------------------------------------------------------------------------


def dpo_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): log p(response | prompt) [n] in fp32, summed over each response's tokens, of a
    batch as TRL's `DataCollatorForPreference` makes it (input_ids [2n, T], the chosen rows then the
    rejected ones, attention_mask and completion_mask). Only the completion positions reach the LM head,
    a chunk at a time (`lm_head_chunks`), as in TRL's DPOTrainer, which computes the same numbers for the
    policy and the reference with its own fused LM head.

    model: plain, PEFT, DDP, a DeepSpeed engine or FSDP; it runs through its own forward.
    """
    from pai_distil_jobs.train.lm_head_chunks import final_hidden, head_params, run_inside, sequence_logprobs, unwrap

    def sums(input_ids=None, attention_mask=None, **_):
        lm = unwrap(model)
        hidden = final_hidden(lm, {"input_ids": input_ids, "attention_mask": attention_mask})
        return sequence_logprobs(hidden, *head_params(lm), input_ids, batch["completion_mask"])[0]

    logps = run_inside(model, sums, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logps.chunk(2)


@torch.inference_mode()
def completion_logps(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """`dpo_logps` of every example's chosen and rejected response: a tensor [n, 2]."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=pad_id)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        part = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                                                      for e in part]).items()}
        out.append(torch.stack(dpo_logps(model, batch), dim=1).float().cpu())
    return torch.cat(out)


def preference(policy: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """The policy's pairwise preference on held-out pairs, from `completion_logps` [n, 2]:
    `logp_margin`, the mean of log p(chosen) - log p(rejected), and `prefers_chosen`, the share of pairs
    where chosen is the likelier; against a reference, `logratio_margin`, the mean of
    log(p / p_ref)(chosen) - log(p / p_ref)(rejected) (DPO's implicit reward over beta), and
    `logratio_prefers_chosen`, the share of pairs where it is above 0 (0 when the policy is the reference)."""
    own = policy[:, 0] - policy[:, 1]
    out = {"logp_margin": round(own.mean().item(), 4), "prefers_chosen": round((own > 0).float().mean().item(), 4)}
    ratio = own - (reference[:, 0] - reference[:, 1]) if reference is not None else torch.zeros_like(own)
    out.update(logratio_margin=round(ratio.mean().item(), 4),
               logratio_prefers_chosen=round((ratio > 0).float().mean().item(), 4))
    return out


def held_out_report(policy_path: Path, reference_spec: str, seed: int, examples: list[dict]) -> dict:
    """`preference` of the reference (before) and of the trained policy against it (after)."""
    from pai_distil_jobs.models.models import load_for_inference

    logps = {}
    for name, spec in (("reference", reference_spec), ("policy", str(policy_path))):
        model, tokenizer = load_for_inference(spec, seed=seed)
        logps[name] = completion_logps(model, examples, tokenizer.pad_token_id)
        del model
    return {"pairs": len(examples), "before": preference(logps["reference"]),
            "after": preference(logps["policy"], logps["reference"])}


# -- training --------------------------------------------------------------------------------------


def dpo_trainer_class():
    from trl import DPOTrainer

    from pai_distil_jobs.train.trainer import JobTrainerMixin

    class JobDPOTrainer(JobTrainerMixin, DPOTrainer):
        """TRL's DPOTrainer with the job contract; rows arrive tokenized (see the module docstring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def log(self, logs: dict, start_time: float | None = None) -> None:
            for mode in self._metrics.values():
                for k in [k for k in mode if k not in KEPT]:
                    del mode[k]
            super().log(logs, start_time)

    return JobDPOTrainer


def dpo_arguments(cfg: DPOConfig, settings, checkpoint_dir: Path, n_pairs: int, max_length: int):
    """TRL's DPOConfig for ours: the loss variants, beta, and `settings.batch_size` pairs a step."""
    from trl import DPOConfig as TRLDPOConfig

    from pai_distil_jobs.train.trainer import training_arguments

    return training_arguments(settings, checkpoint_dir, n_pairs, cls=TRLDPOConfig, max_length=max_length,
                              loss_type=cfg.losses, loss_weights=cfg.loss_weights, beta=cfg.beta,
                              label_smoothing=cfg.label_smoothing, dataset_num_proc=None)


def load_policy_and_reference(source: str, args, seed: int, train):
    """The policy to train and the frozen reference (`sharded_load.load_policy_and_reference`), with the
    error a user can act on when the student cannot be loaded."""
    from pai_distil_jobs.train import sharded_load

    try:
        return sharded_load.load_policy_and_reference(source, args, seed=seed, lora=bool(train.lora),
                                                      attn_implementation=train.attn_implementation)
    except OSError as e:
        raise JobError(f"the student ({source}: the `student` input or student.model) cannot be loaded: "
                       f"{str(e).splitlines()[0]}") from None


def train_dpo(ctx: JobContext, cfg: DPOConfig, source: str, train_rows: list[dict], eval_rows: list[dict]) -> bool:
    """DPO of the checkpoint `source` on `train_rows`; the final checkpoint and report.json (held-out
    preference before and after) in ctx.output. False if stopped by SIGTERM (a checkpoint was saved)."""
    import datasets

    from pai_distil_jobs.models.models import load_tokenizer
    from pai_distil_jobs.train import sharded_load
    from pai_distil_jobs.train.sft_train import job_callbacks, lora_config, save_final, say_defaults
    from pai_distil_jobs.models.threads import set_cpu_threads
    from pai_distil_jobs.train.trainer import TrainSettings, fit

    datasets.disable_progress_bars()
    rank = int(os.environ.get("RANK", "0"))
    say = log if rank == 0 else (lambda m: None)
    threads = set_cpu_threads()
    preset = trains_like_preset(source)
    train, filled = by_kind_here(cfg.train, preset)
    say_defaults(filled, preset, say)
    seed = cfg.student.seed
    try:
        tokenizer = load_tokenizer(source)
        settings = TrainSettings.of(train, hidden_size=sharded_load.model_hidden_size(source))
    except OSError as e:
        raise JobError(f"the student ({source}: the `student` input or student.model) cannot be loaded: "
                       f"{str(e).splitlines()[0]}") from None
    examples = encode_pairs(tokenizer, train_rows, train.max_length, train.max_truncated, "training", log=say)
    held = encode_pairs(tokenizer, eval_rows, train.max_length, 1.0, "held-out", log=say)
    args = dpo_arguments(cfg, settings, ctx.checkpoint_dir, len(examples), train.max_length)
    model, reference = load_policy_and_reference(source, args, seed, train)
    losses = ", ".join(cfg.losses)
    say(f"dpo: model {sharded_load.parameter_count(model) / 1e6:.2f}M parameters on {args.device} "
        f"({'bf16' if args.bf16 else 'fp32'}, loaded in {str(model.dtype).removeprefix('torch.')}, reference in "
        f"{str((reference or model).dtype).removeprefix('torch.')}, {threads} CPU threads); {len(examples)} pairs "
        f"to train, {len(held)} held "
        f"out; loss {losses}, beta {cfg.beta:g}; reference: {source}{' with the adapter off' if train.lora else ''}; "
        f"{train.max_steps} steps of {train.batch_size} pairs = {args.world_size} processes x "
        f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation")
    callback, callbacks = job_callbacks(ctx, train, tokenizer, rank, say)
    dataset = datasets.Dataset.from_list([{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                                          for e in examples])
    trainer = dpo_trainer_class()(model=model, ref_model=reference, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=callbacks,
                                  peft_config=lora_config(train.lora) if train.lora else None)
    trainer.job = settings
    if train.fsdp and not trainer.is_fsdp_enabled:
        raise JobError("train.fsdp needs GPUs (accelerate runs FSDP on multi-GPU nodes only); on CPUs drop it "
                       "or use train.deepspeed")
    if not fit(trainer, callback, ctx.checkpoint_dir, log=say):
        return False
    save_final(trainer, tokenizer, ctx, train)
    steps = trainer.state.global_step
    del trainer, model, reference, args
    sharded_load.release_sharding()  # the report below loads whole models on rank 0 alone
    if rank == 0:
        table = held_out_report(ctx.output, source, seed, held)
        report = {"held_out": table, "train_pairs": len(examples), "steps": steps, "student": source,
                  "loss_type": cfg.loss_type, "beta": cfg.beta}
        (ctx.output / REPORT).write_text(json.dumps(report, indent=1))
        a, b = table["before"], table["after"]
        say(f"dpo: held-out pairs ({table['pairs']}): chosen likelier than rejected {a['prefers_chosen']:.1%} -> "
            f"{b['prefers_chosen']:.1%}, mean log-probability margin {a['logp_margin']:.2f} -> {b['logp_margin']:.2f}; "
            f"log-ratio against the reference: margin {b['logratio_margin']:.2f}, chosen above rejected on "
            f"{b['logratio_prefers_chosen']:.1%}")
    return True
