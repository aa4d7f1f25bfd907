"""A small supervised trainer with exact resume: the loop every SFT stage shares.

Why our own loop rather than `transformers.Trainer` / TRL's `SFTTrainer`: on two CPU cores the
stage must start in seconds and resume a SIGKILLed job from its newest checkpoint with the same
data order, optimizer and RNG state, and save on SIGTERM. That is ~150 lines here; the model,
tokenizer and checkpoint format stay Hugging Face's own.

Checkpoints live in `checkpoint_dir/step-NNNNNNN/`; a checkpoint is complete once its
`COMPLETE` marker exists (written last, after an atomic rename), so a kill while saving leaves
only an incomplete directory that resume ignores.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .sft_data import collate

COMPLETE = "COMPLETE"


@dataclass
class TrainSettings:
    max_steps: int
    schedule_steps: int | None = None  # the cosine schedule's length; default max_steps
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    keep_order: bool = False  # True: batches follow the examples' order (curriculum), no shuffling

    @classmethod
    def of(cls, train, batch_size: int | None = None, **kw) -> TrainSettings:
        """Settings from a stage's training config (`Training`, `RewardTraining`, `GRPOTraining`)."""
        fields = ("max_steps", "learning_rate", "warmup_steps", "weight_decay", "checkpoint_every",
                  "keep_checkpoints", "log_every", "seed")
        return cls(batch_size=batch_size or train.batch_size, schedule_steps=getattr(train, "schedule_steps", None),
                   **{f: getattr(train, f) for f in fields}, **kw)


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    done = [p for p in checkpoint_dir.glob("step-*") if (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


class Trainer:
    def __init__(self, model, tokenizer, examples: list[dict], settings: TrainSettings,
                 checkpoint_dir: Path, metrics_path: Path, log=print, stop_check=None):
        """`stop_check(model, step) -> (stop, metrics)`, with an `every` attribute: called on rank 0
        every `every` steps; training ends early (as finished) when it says stop."""
        self.model, self.tokenizer, self.examples, self.s = model, tokenizer, examples, settings
        self.stop_check = stop_check
        self.stopped_early = False
        self.checkpoint_dir, self.metrics_path, self.log = Path(checkpoint_dir), Path(metrics_path), log
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.step = 0
        self._stop = False
        self._epoch_cache: tuple[int, list[list[int]]] = (-1, [])
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay, betas=(0.9, 0.98))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    # -- schedule and data order -------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        if step < self.s.warmup_steps:
            return (step + 1) / self.s.warmup_steps
        length = self.s.schedule_steps or self.s.max_steps
        progress = (step - self.s.warmup_steps) / max(1, length - self.s.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _batch(self, step: int) -> list[dict]:
        """The examples of global batch `step` for this rank: a function of the step alone, so a
        resumed run sees exactly the batches it would have seen."""
        per_epoch = max(1, len(self.examples) // self.s.batch_size)
        epoch, offset = divmod(step, per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self._epoch_batches(epoch))
        idx = self._epoch_cache[1][offset]
        return [self.examples[i] for i in idx[self.rank::self.world]]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches: a seeded shuffle, or the examples' own order for a curriculum.

        Batches are not grouped by length: on this data, length follows the problem's shape,
        and batches of one shape learn far worse than mixed ones.
        """
        n, bs = len(self.examples), self.s.batch_size
        order = list(range(n))
        if not self.s.keep_order:
            random.Random(self.s.seed * 100_003 + epoch).shuffle(order)
        return [order[k:k + bs] for k in range(0, max(bs, n - n % bs), bs)]

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        final = self.checkpoint_dir / f"step-{self.step:07d}"
        if self.rank == 0:
            tmp = self.checkpoint_dir / f".tmp-step-{self.step:07d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._unwrapped().save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "step": self.step, "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (final / COMPLETE).write_text(json.dumps({"step": self.step, "time": time.time()}))
            self._prune()
        if dist.is_initialized():
            dist.barrier()
        return final

    def _prune(self) -> None:
        done = sorted((p for p in self.checkpoint_dir.glob("step-*") if (p / COMPLETE).exists()),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-self.s.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> None:
        ckpt = newest_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return
        from safetensors.torch import load_file

        model = self._unwrapped()
        if hasattr(model, "load_weights"):  # a model that is more than one Hugging Face module
            model.load_weights(ckpt)
        else:
            model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self._truncate_metrics()
        self.log(f"resuming from checkpoint {ckpt.name} (step {self.step} of {self.s.max_steps})")

    def _truncate_metrics(self) -> None:
        """Drop records logged after the checkpoint we resume from: those steps run again."""
        if self.rank != 0 or not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def _unwrapped(self):
        return self.model.module if hasattr(self.model, "module") else self.model

    # -- what is learned: subclasses (reward model, GRPO) replace these two -----------------------
    def make_batch(self, examples: list[dict]) -> dict:
        """The tensors of one step from its examples."""
        return collate(examples, self.tokenizer.pad_token_id)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The loss of one batch, and extra numbers to log with it."""
        return self.model(**batch).loss, {}

    # -- loop ----------------------------------------------------------------------------------
    def train_step(self, batch: dict):
        """Forward, backward and one optimizer step; returns the loss, the gradient norm and the
        extra metrics. DeepSpeedTrainer replaces it with the engine's step."""
        loss, extra = self.compute_loss(batch)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, gnorm, extra

    def _target_reached(self, metrics) -> bool:
        """Run `stop_check` on rank 0 and tell every rank what it decided."""
        decision = torch.zeros(1)
        if self.rank == 0:
            reached, extra = self.stop_check(self._unwrapped(), self.step)
            metrics.write(json.dumps({"step": self.step, **extra}) + "\n")
            metrics.flush()
            decision[0] = float(reached)
        self.model.train()  # decoding switched it to eval mode
        if dist.is_initialized():
            dist.broadcast(decision, 0)
        return bool(decision.item())

    def _on_sigterm(self, *_):
        self._stop = True

    def train(self) -> bool:
        """Train to `max_steps`, or until `stop_check` says stop. Returns False when stopped by SIGTERM
        (checkpoint saved)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.model.train()
        t0, tokens = time.time(), 0
        metrics = self.metrics_path.open("a") if self.rank == 0 else None
        try:
            while self.step < self.s.max_steps:
                batch = self.make_batch(self._batch(self.step))
                loss, gnorm, extra = self.train_step(batch)
                self.step += 1
                tokens += int(batch["attention_mask"].sum())
                if self.rank == 0 and (self.step % self.s.log_every == 0 or self.step == self.s.max_steps):
                    rec = {"step": self.step, "loss": round(loss.item(), 5), "grad_norm": round(float(gnorm), 4),
                           "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": round(tokens / (time.time() - t0), 1),
                           **extra}
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    shown = "".join(f" {k} {v:g}" for k, v in extra.items() if isinstance(v, int | float))
                    self.log(f"step {self.step}/{self.s.max_steps} loss {rec['loss']:.4f} "
                             f"lr {rec['lr']:.2e} {rec['tokens_per_s']:.0f} tok/s{shown}")
                if (self.stop_check and self.step % self.stop_check.every == 0 and self.step < self.s.max_steps
                        and self._target_reached(metrics)):
                    self.stopped_early = True
                    return True
                if self.step % self.s.checkpoint_every == 0 and self.step < self.s.max_steps:
                    self.save_checkpoint()
                if self._stop:
                    self.save_checkpoint()
                    self.log(f"SIGTERM: saved checkpoint at step {self.step}; exiting")
                    return False
        finally:
            if metrics:
                metrics.close()
        return True
