"""The SFT driver shared by the distillation stages: model, data, distributed setup, final save."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from pai_distil.specs import Student, Training

from ..contract import JobContext, JobError, log
from .models import load_model
from .sft_data import encode_messages
from .trainer import Trainer, TrainSettings


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return True
    return False


def train_sft(ctx: JobContext, student: Student, train: Training, rows: list[dict], keep_order: bool = False) -> bool:
    """Train `student` on SFT rows; write the final HF checkpoint to ctx.output. False if stopped early.

    `keep_order`: batches follow the rows' order (a curriculum) instead of being shuffled.
    """
    if train.deepspeed:  # DeepSpeed sets up its own group (gloo on CPU, NCCL on GPU)
        from .deepspeed_trainer import init_distributed

        init_distributed()
    distributed = dist.is_initialized() or _init_distributed()
    rank = dist.get_rank() if distributed else 0
    model, tokenizer = load_model(student.model, seed=student.seed)
    examples = [e for r in rows
                if (e := encode_messages(tokenizer, r["messages"], train.max_length, r.get("chat_template_kwargs")))]
    if not examples:
        raise JobError(f"every training row is longer than train.max_length={train.max_length}; raise it")
    if rank == 0:
        n_tok = sum(len(e["input_ids"]) for e in examples)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model {n_params / 1e6:.2f}M parameters; {len(examples)} sequences, {n_tok} tokens "
            f"(mean {n_tok / len(examples):.0f}); {train.max_steps} steps of batch {train.batch_size}")
    if distributed and not train.deepspeed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    settings = TrainSettings.of(train, keep_order=keep_order)
    quiet = log if rank == 0 else lambda m: None
    stop_check = None
    if train.stop_at:
        from .stop_at import AccuracyTarget

        stop_check = AccuracyTarget(train.stop_at, tokenizer, log=quiet)
    if train.deepspeed:
        from .deepspeed_trainer import DeepSpeedTrainer

        trainer = DeepSpeedTrainer(model, tokenizer, examples, settings, ctx.checkpoint_dir, ctx.metrics_path,
                                   train, log=quiet, stop_check=stop_check)
    else:
        trainer = Trainer(model, tokenizer, examples, settings, ctx.checkpoint_dir, ctx.metrics_path, log=quiet,
                          stop_check=stop_check)
    finished = trainer.train()
    if finished and train.deepspeed:
        trainer.save_model(ctx.output)  # every rank: ZeRO-3 gathers the partitioned weights
    elif finished and rank == 0:
        final = model.module if distributed else model
        final.save_pretrained(ctx.output)
        tokenizer.save_pretrained(ctx.output)
    if finished and rank == 0:
        summary = {"steps": trainer.step, "examples": len(examples), "student": student.model}
        if train.stop_at:
            summary["stopped_at_target"] = trainer.stopped_early
        (ctx.output / "training_summary.json").write_text(json.dumps(summary, indent=1))
        log(f"saved the student to {ctx.output}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return finished
