"""The trainer under DeepSpeed ZeRO (stage 2 or 3), used when `train.deepspeed` is set.

Same loop, data order, schedule and checkpoint layout as `Trainer`; DeepSpeed's engine does the
backward pass, the clipping and the partitioned optimizer step. A checkpoint holds the Hugging
Face weights (gathered whole, also under ZeRO-3) and DeepSpeed's sharded optimizer state in
`deepspeed/`, which every rank writes and reads, so a resumed job continues exactly.
On CPUs the process group is gloo (DeepSpeed's CPU accelerator); on GPUs, NCCL.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pai_distil.deepspeed_config import zero_config
from pai_distil.specs import Training

from ..contract import JobError
from .trainer import COMPLETE, Trainer, TrainSettings, newest_checkpoint

TAG = "deepspeed"  # DeepSpeed's folder inside each step-N checkpoint


def init_distributed() -> None:
    """DeepSpeed's process group from torchrun's variables (every job runs under torchrun)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # DeepSpeed would JIT-compile a shared-memory allreduce kernel, which needs a C++ compiler
        # (the job images have none) and minutes of two cores; gloo's own allreduce serves.
        # (by module path: the package's attribute `torch` is PyTorch itself)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not dist.is_initialized():
        deepspeed.init_distributed(verbose=False)


class DeepSpeedTrainer(Trainer):
    def __init__(self, model, tokenizer, examples: list[dict], settings: TrainSettings, checkpoint_dir: Path,
                 metrics_path: Path, train: Training, log=print, stop_check=None):
        import deepspeed

        super().__init__(model, tokenizer, examples, settings, checkpoint_dir, metrics_path, log=log,
                         stop_check=stop_check)
        self.config = zero_config(train, self.world)
        self.stage = train.deepspeed.stage
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=self.config)
        self.model = self.engine
        if self.rank == 0:  # the generated config, beside the metrics in the artifact
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
            (Path(metrics_path).parent / "deepspeed_config.json").write_text(json.dumps(self.config, indent=1))
        self.log(f"DeepSpeed ZeRO-{self.stage} on {self.world} process(es), device {self.engine.device}, "
                 f"bf16 {train.deepspeed.bf16}")

    def train_step(self, batch: dict):
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        loss, extra = self.compute_loss(batch)
        self.engine.backward(loss)
        self.engine.step()  # clips, steps the partitioned optimizer and the schedule, zeroes grads
        gnorm = self.engine.get_global_grad_norm()
        return loss, float(gnorm) if gnorm is not None else 0.0, extra

    def save_model(self, path: Path) -> None:
        """Hugging Face weights and tokenizer in `path`; call on every rank (ZeRO-3 gathers)."""
        state = self.engine._zero3_consolidated_16bit_state_dict() if self.stage == 3 else None
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            self._unwrapped().save_pretrained(path, state_dict=state)
            self.tokenizer.save_pretrained(path)

    def save_checkpoint(self) -> Path:
        final = self.checkpoint_dir / f"step-{self.step:07d}"
        tmp = self.checkpoint_dir / f".tmp-step-{self.step:07d}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.engine.save_checkpoint(str(tmp), tag=TAG, client_state={"step": self.step}, save_latest=False)
        self.save_model(tmp)
        if self.rank == 0:
            torch.save({"step": self.step, "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
            (tmp / "deepspeed_config.json").write_text(json.dumps(self.config, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (final / COMPLETE).write_text(json.dumps({"step": self.step, "time": time.time()}))
            self._prune()
        dist.barrier()
        return final

    def resume(self) -> None:
        ckpt = newest_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return
        if not (ckpt / TAG).is_dir():
            raise JobError(f"checkpoint {ckpt} was not written by DeepSpeed; remove it or train without "
                           "train.deepspeed")
        _, client = self.engine.load_checkpoint(str(ckpt), tag=TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        self.step = int(client["step"])
        torch.set_rng_state(torch.load(ckpt / "trainer_state.pt", weights_only=False)["torch_rng"])
        self._truncate_metrics()
        self.log(f"resuming from checkpoint {ckpt.name} (step {self.step} of {self.s.max_steps})")
