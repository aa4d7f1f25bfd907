"""The SFT driver shared by the distillation stages: TRL's `SFTTrainer` over accelerate.

One process per GPU (`cuda:LOCAL_RANK`, NCCL) or per CPU process (gloo), bf16 where the GPU
supports it, DeepSpeed ZeRO / FSDP / LoRA when asked. Rows are tokenized here (the loss mask
comes from the chat template, see `sft_data`), so TRL trains exactly the tokens we chose.
"""

from __future__ import annotations

import json
import os

from pai_distil.core.presets import trains_like_preset
from pai_distil.core.config import Student, Training

from pai_distil.core.contract import JobContext, JobError, log
from pai_distil_jobs.models.models import attention_kernel, load_tokenizer
from pai_distil_jobs.train.sharded_load import load_trained, model_hidden_size, parameter_count
from pai_distil_jobs.models.threads import set_cpu_threads
from pai_distil_jobs.train.sft_data import log_example
from pai_distil_jobs.train.token_cache import encoded_rows
from pai_distil_jobs.train.trainer import by_kind_here, JobCallback, JobTrainerMixin, TrainSettings, fit, tensorboard_callback, training_arguments


def _sft_trainer_class():
    import torch
    from trl import SFTTrainer

    class JobSFTTrainer(JobTrainerMixin, SFTTrainer):
        """TRL's SFTTrainer with the job contract's checkpoints, schedule and divergence check; the loss is
        `sft_loss` (TRL's own fused LM head tiles every position of a batch on CPUs; ours only the trained
        ones, on every device, and a trace of the step calls the same function)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            stats = {}
            loss, n = sft_loss(model, inputs, num_items_in_batch, metrics=stats)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as SFTTrainer: DDP averages
            gather = self.accelerator.gather_for_metrics
            valid = gather(n.detach()).sum().clamp(min=1)
            self._metrics[mode]["entropy"].append((gather(stats["entropy"]).sum() / valid).item())
            self._metrics[mode]["mean_token_accuracy"].append((gather(stats["correct"]).sum() / valid).item())
            if mode == "train":
                ids = inputs["input_ids"]  # a padding-free batch has no mask and no padding
                local = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(ids.numel(), device=ids.device)
                self._total_train_tokens += int(gather(local).sum()) // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, None) if return_outputs else loss

    return JobSFTTrainer


def sft_loss(model, batch: dict, num_items_in_batch=None, metrics: dict | None = None):
    """(loss, trained tokens) of one SFT batch: the summed CE of the tokens whose label is not -100, over
    `num_items_in_batch` (the accumulated steps' trained tokens, as transformers counts them) or else over
    this batch's own. The same loss as TRL's SFTTrainer and transformers' causal-LM loss, through
    `lm_head_chunks` (no [tokens, vocab] tensor).

    model: as the trainer holds it (plain, PEFT, DDP, a DeepSpeed engine or FSDP); batch: TRL's
    collator's (input_ids, labels, and attention_mask, or position_ids and the varlen fields of a
    padding-free batch); metrics, when given, gets the summed `entropy` and `correct` (target = argmax)
    of the trained tokens, without gradient.
    """
    import torch

    from pai_distil_jobs.train.lm_head_chunks import (final_hidden, head_params, next_token_positions, run_inside,
                                                      token_logprobs, unwrap)

    labels = batch["labels"]

    def nll_sum(**inputs):
        lm = unwrap(model)
        hidden = final_hidden(lm, inputs)
        rows, pos = next_token_positions(labels != -100)
        logp, entropy, top1 = token_logprobs(hidden[rows, pos], *head_params(lm), labels[rows, pos + 1],
                                             stats=metrics is not None)
        if metrics is not None:
            metrics.update(entropy=entropy.sum(), correct=top1.sum())
        return -logp.sum()

    total = run_inside(model, nll_sum, **{k: v for k, v in batch.items() if k != "labels"})
    n = (labels[:, 1:] != -100).sum()
    return total / torch.as_tensor(n if num_items_in_batch is None else num_items_in_batch).clamp(min=1), n



def lora_config(lora):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def say_defaults(filled: dict, preset: bool, say) -> None:
    if filled:
        kind = "a preset" if preset else "a checkpoint"
        say(f"defaults for {kind}: " + ", ".join(f"train.{k}={v}" for k, v in filled.items())
            + " (set them in the config to override)")


def sampling(keep_order: bool, flattened: bool) -> str:
    """The order of training rows: the curriculum's; or, in padded batches, rows of similar length
    together (sorted within shuffled groups of 50 batches), so little of a batch is padding."""
    return "sequential" if keep_order else "random" if flattened else "group_by_length"


def padding_free_mode(train: Training, attn: str, say) -> bool:
    """Whether batches are flattened without padding (`train.padding_free`): where flash-attention's varlen
    kernel keeps each row's attention to itself by its position ids (flex_attention too). sdpa or eager,
    on a CPU or a GPU without flash-attn, would build a dense mask over the whole flattened batch, slower
    than the padding it saves: padded, length-grouped batches there, said in one line. Packing flattens
    rows itself (TRL gives each packed row its position ids), whatever the kernel."""
    if not train.padding_free or train.packing:
        return train.padding_free
    if "flash" in attn or attn == "flex_attention":
        say(f"padding-free: each micro-batch is one flat sequence, rows kept apart by their position ids ({attn})")
        return True
    say(f"note: train.padding_free needs flash-attention's varlen kernel (flash-attn on GPUs); {attn} would build "
        "a dense mask over the whole flattened batch, so batches are padded and length-grouped instead. Install "
        "flash-attn in the image and set train.attn_implementation: auto, or drop train.padding_free")
    return False


def job_callbacks(ctx: JobContext, train: Training, tokenizer, rank: int, say) -> tuple[JobCallback, list]:
    """Our callback (metrics.jsonl, SIGTERM, `train.stop_at`) and the list to give a trainer: it, and
    TensorBoard on rank 0 when `train.report_to` names it."""
    stop_check = None
    if getattr(train, "stop_at", None):  # GRPO's settings have no stop_at
        from pai_distil_jobs.train.stop_at import AccuracyTarget

        stop_check = AccuracyTarget(train.stop_at, tokenizer, log=say)
    callback = JobCallback(ctx.metrics_path, log=say, stop_check=stop_check)
    tensorboard = rank == 0 and "tensorboard" in train.report_to
    return callback, [callback] + ([tensorboard_callback(ctx.output)] if tensorboard else [])


def train_sft(ctx: JobContext, student: Student, train: Training, rows: list[dict], keep_order: bool = False,
              distill=None) -> bool:
    """Train `student` on SFT rows; write the final HF checkpoint to ctx.output. False if stopped early
    by SIGTERM (a checkpoint was saved).

    `keep_order`: batches follow the rows' order (a curriculum) instead of being shuffled.
    """
    import datasets
    from trl import SFTConfig

    datasets.disable_progress_bars()  # job logs are files: TRL's data preparation bars are noise there

    rank = int(os.environ.get("RANK", "0"))
    say = log if rank == 0 else (lambda m: None)
    threads = set_cpu_threads()
    preset = trains_like_preset(student.model)
    train, filled = by_kind_here(train, preset)
    say_defaults(filled, preset, say)
    if distill is not None and distill.rollout == "vllm":
        from pai_distil_jobs.train.distill import check_vllm_rollout

        check_vllm_rollout(distill, str(student.model))
    tokenizer = load_tokenizer(student.model)  # the model loads after the arguments, into its sharded layout
    if distill is not None and (train.packing or train.padding_free):
        raise JobError("distill needs each row in a sequence of its own; drop train.packing and train.padding_free")
    examples = encoded_rows(tokenizer, rows, train.max_length, train.max_truncated, ctx.checkpoint_dir,
                            keyed=distill is not None, say=say, all_turns=train.all_turns)
    log_example(tokenizer, examples[0], say)
    padding_free = padding_free_mode(train, attention_kernel(train.attn_implementation), say)
    settings = TrainSettings.of(train, keep_order=keep_order, hidden_size=model_hidden_size(student.model))
    # rows come encoded and cut at max_length (token_cache): TRL prepares them no further (its truncation would
    # copy the data set on every rank), unless it packs them; padding-free without packing it refuses max_length
    args = training_arguments(settings, ctx.checkpoint_dir, len(examples), cls=SFTConfig,
                              max_length=None if padding_free and not train.packing else train.max_length,
                              packing=train.packing, padding_free=padding_free, dataset_num_proc=None,
                              shuffle_dataset=False, dataset_kwargs={"skip_prepare_dataset": not train.packing},
                              train_sampling_strategy=sampling(keep_order, train.packing or padding_free))
    model, _ = load_trained(student.model, args, seed=student.seed, attn_implementation=train.attn_implementation,
                            lora=bool(train.lora))
    n_tok = sum(examples["length"])
    say(f"model {parameter_count(model) / 1e6:.2f}M parameters on {args.device} "
        f"({'bf16' if args.bf16 else 'fp32'}, loaded in {str(model.dtype).removeprefix('torch.')}, "
        f"{model.config._attn_implementation}, {threads} CPU threads); "
        f"{len(examples)} sequences, {n_tok} tokens (mean {n_tok / len(examples):.0f}); {train.max_steps} steps "
        f"of batch {train.batch_size} = {args.world_size} processes x {args.per_device_train_batch_size} "
        f"x {args.gradient_accumulation_steps} accumulation")
    callback, callbacks = job_callbacks(ctx, train, tokenizer, rank, say)
    peft = lora_config(train.lora) if train.lora else None
    if distill is None:
        trainer = _sft_trainer_class()(model=model, args=args, train_dataset=examples, processing_class=tokenizer,
                                       peft_config=peft, callbacks=callbacks)
    else:
        from pai_distil_jobs.train.distill import kd_trainer

        trainer = kd_trainer(ctx, distill, model, tokenizer, student.model, examples, args, peft, callbacks, say)
    trainer.job = settings
    if train.fsdp and not trainer.is_fsdp_enabled:
        raise JobError("train.fsdp needs GPUs (accelerate runs FSDP on multi-GPU nodes only); on CPUs drop it "
                       "or use train.deepspeed")
    if train.fsdp or train.deepspeed:
        say("sharding: " + (f"FSDP2 {train.fsdp.sharding}" if train.fsdp else f"DeepSpeed ZeRO-{train.deepspeed.stage}"))
    if train.lora and rank == 0:
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        say(f"LoRA r={train.lora.r}: {trained / 1e6:.3f}M trainable parameters")
    if not fit(trainer, callback, ctx.checkpoint_dir, log=say):
        return False
    save_final(trainer, tokenizer, ctx, train)
    if rank == 0:
        summary = {"steps": trainer.state.global_step, "examples": len(examples), "student": student.model}
        summary["start_step"] = _steps_before(student.model)
        if train.stop_at:
            summary["stopped_at_target"] = callback.stopped_early
        (ctx.output / "training_summary.json").write_text(json.dumps(summary, indent=1))
        say(f"saved the student to {ctx.output}")
    return True


def _steps_before(model: str) -> int:
    """Steps the starting checkpoint was trained for by an earlier stage (0 for a preset or a foreign
    checkpoint): where this run's learning curve continues."""
    from pathlib import Path

    try:
        done = json.loads((Path(model) / "training_summary.json").read_text())
        return int(done.get("start_step", 0)) + int(done["steps"])
    except (OSError, ValueError, KeyError, TypeError):  # no summary: not one of our stages' checkpoints
        return 0


def save_final(trainer, tokenizer, ctx: JobContext, train: Training) -> None:
    """The student as a Hugging Face checkpoint in ctx.output, whole also under ZeRO-3 / FSDP; with
    LoRA, the merged model there and the adapter alone in `adapter/`. FSDP's resume checkpoints are
    sharded; the final model is gathered whole (a full state dict, rank 0 writes it)."""
    from pai_distil_jobs.models.models import set_generation_stops

    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if train.lora:
        trainer.save_model(str(ctx.output / "adapter"))
        if trainer.is_world_process_zero():
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            set_generation_stops(merged, tokenizer)
            merged.save_pretrained(ctx.output)
            tokenizer.save_pretrained(ctx.output)
    else:
        if trainer.is_world_process_zero():
            set_generation_stops(trainer.accelerator.unwrap_model(trainer.model), tokenizer)
        trainer.save_model(str(ctx.output))  # every rank: ZeRO-3 / FSDP gather the sharded weights
    if trainer.args.bf16 and trainer.is_world_process_zero():
        from pai_distil_jobs.models.precision import cast_checkpoint

        cast_checkpoint(ctx.output, "bfloat16")  # trained in bf16: saved in it (fp32 stays on CPU presets)
    if train.deepspeed and trainer.is_world_process_zero():  # the config the run used, "auto" values filled
        used = trainer.args.hf_deepspeed_config.config
        (ctx.output / "deepspeed_config.json").write_text(json.dumps(used, indent=1, default=str))
    trainer.accelerator.wait_for_everyone()
