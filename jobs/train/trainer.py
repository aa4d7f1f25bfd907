"""Training on TRL and accelerate, with the job contract's guarantees.

Why a layer over TRL at all: TRL and accelerate give device placement (`cuda:LOCAL_RANK`), NCCL,
bf16, accumulation, gradient checkpointing, DeepSpeed ZeRO, FSDP and PEFT. The job contract asks
for a little more, written here once for every stage's trainer (SFT, reward model, GRPO):

- checkpoints are complete only with their marker: TRL saves `checkpoint_dir/checkpoint-N/` where it
  stays (never renamed: on an OSS mount a rename copies every object), then it gets a manifest and
  `COMPLETE`; a SIGKILL while saving leaves nothing resume would trust, and resume verifies the
  manifest (checkpoints.py);
- SIGTERM (spot preemption, `runs cancel`) saves a checkpoint and exits promptly;
- `metrics.jsonl` (one record per logged step) and TensorBoard event files beside it;
- a loss that stops being finite fails the run instead of saving a NaN model;
- the project's schedule (warmup, cosine to 10 % over `schedule_steps`) and curriculum order.

A trainer class is `class X(JobTrainerMixin, trl.SomeTrainer)`, built with `training_arguments`
and run by `fit`, which resumes from the newest complete checkpoint with the same data order,
optimizer, scheduler and RNG state (TRL's own resume, fed our checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from pai_distil.core.contract import JobError
from pai_distil_jobs.train.passthrough import fit_epochs, passed_through
from pai_distil_jobs.train.checkpoints import (PREFIX, newest_checkpoint, remove_unfinished, resumable_checkpoint,
                                                seal_checkpoint)

# TRL's configs still spell it gradient_checkpointing (and default it on); transformers warns on the alias.
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*is deprecated", category=FutureWarning)



@dataclass
class TrainSettings:
    """What every training stage shares, read from its config (`Training`, `RewardTraining`, `GRPOTraining`)."""

    max_steps: int
    schedule_steps: int | None = None  # the cosine schedule's length; default max_steps
    batch_size: int = 32  # sequences (or prompts) per optimizer step, over all processes
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    keep_order: bool = False  # True: batches follow the examples' order (curriculum), no shuffling
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    bf16: bool | None = None  # None: on where the GPU supports it
    max_bad_steps: int = 3
    deepspeed: object | None = None  # specs.DeepSpeed
    fsdp: object | None = None  # specs.FSDP
    hidden_size: int | None = None  # the model's (from its config): sizes DeepSpeed's communication buckets
    report_to: tuple[str, ...] = ("tensorboard",)  # experiment trackers (see `trackers`)
    epochs: float | None = None  # set: max_steps comes from the rows (fit_epochs)
    lr_scheduler: str = "cosine"  # cosine: ours (`schedule`); else transformers' own
    optim: str = "adamw_torch_fused"
    extra: dict = field(default_factory=dict)  # more TrainingArguments / TRL config fields, passed through
    warmup_longest: int = 30  # with epochs: the default warmup, a tenth of the run, at most this

    @classmethod
    def of(cls, train, batch_size: int | None = None, **kw) -> TrainSettings:
        """Settings from a stage's training config; fields a config lacks keep their defaults here."""
        names = ("max_steps", "schedule_steps", "learning_rate", "warmup_steps", "weight_decay", "checkpoint_every",
                 "keep_checkpoints", "log_every", "seed", "gradient_accumulation_steps", "gradient_checkpointing",
                 "bf16", "max_bad_steps", "deepspeed", "fsdp", "report_to", "epochs", "lr_scheduler", "optim", "extra")
        found = {n: getattr(train, n) for n in names if getattr(train, n, None) is not None}
        if found.get("epochs") is not None and getattr(train, "warmup_steps", None) is None:
            found.update(warmup_steps=None, warmup_longest=getattr(train, "WARMUP", 30))  # set with max_steps
        return cls(batch_size=batch_size or train.batch_size, **{**found, **kw})


# -- where training runs -----------------------------------------------------------------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def by_kind_here(train, preset: bool):
    """`train.by_kind` for this job's processes and devices: the defaults `pai-distil plan` traces. First of
    all in a training job, so a precision the device lacks fails in one line before anything loads."""
    check_bf16_here(train)
    return train.by_kind(preset, world_size(), torch.cuda.is_available())


def check_bf16_here(train) -> None:
    """bf16 asked for where the device has none: a CPU runs it emulated (and accelerate refuses some of it), a
    pre-Ampere GPU not at all. Refused in one line naming the field, rather than a slow run or a traceback."""
    deepspeed = getattr(train, "deepspeed", None)
    asked = [name for name, on in (("train.bf16", train.bf16),
                                   ("train.deepspeed.bf16", deepspeed is not None and deepspeed.bf16)) if on]
    if not asked or (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return
    where = f"a {torch.cuda.get_device_name()} GPU" if torch.cuda.is_available() else "CPU"
    raise JobError(f"{asked[0]}: true, but this job runs on {where}, which has no bf16; drop {asked[0]} (the default "
                   "is bf16 wherever the GPU supports it) or run on GPUs of the Ampere generation or newer")


def use_bf16(requested: bool | None) -> bool:
    """bf16 mixed precision: on by default where the GPU supports it; on CPU only when asked."""
    if requested is not None:
        return requested
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# -- schedule and checkpoints ------------------------------------------------------------------------


def schedule(warmup: int, length: int):
    """The learning-rate factor at each step: linear warmup, then cosine decay to 10 % at `length`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, length - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# -- arguments ---------------------------------------------------------------------------------------


def per_device_batch(s: TrainSettings, world: int | None = None) -> int:
    """Each process's micro-batch: the global batch over processes (this job's, or `world`) and accumulation
    steps (`pai-distil plan` asks for the world it plans)."""
    world, accum = world or world_size(), s.gradient_accumulation_steps
    micro, rest = divmod(s.batch_size, world * accum)
    if micro == 0 or rest:
        raise JobError(f"train.batch_size={s.batch_size} does not split into {world} processes x "
                       f"{accum} accumulation steps; make it a multiple of {world * accum}")
    return micro


def training_arguments(s: TrainSettings, checkpoint_dir: Path, examples: int, cls=TrainingArguments, **extra):
    """`TrainingArguments` (or TRL's config class `cls`) for settings `s`: the one place that maps our
    fields onto the libraries' (DeepSpeed and FSDP configs included). Build them before loading the
    model: they start the DeepSpeed / FSDP state that loads it sharded (`sharded_load`)."""
    cuda = torch.cuda.is_available()
    fit_epochs(s, examples)
    bf16 = s.bf16
    if bf16 is None and s.deepspeed is not None:
        bf16 = s.deepspeed.bf16  # an explicit DeepSpeed precision wins; transformers checks they agree
    kw = dict(
        output_dir=str(checkpoint_dir), max_steps=s.max_steps,
        per_device_train_batch_size=per_device_batch(s), gradient_accumulation_steps=s.gradient_accumulation_steps,
        learning_rate=s.learning_rate, weight_decay=s.weight_decay, adam_beta2=0.98, max_grad_norm=s.grad_clip,
        lr_scheduler_type="linear" if s.lr_scheduler == "cosine" else s.lr_scheduler, warmup_steps=s.warmup_steps,
        optim=s.optim,
        logging_steps=s.log_every, logging_nan_inf_filter=False, save_strategy="steps",
        save_steps=s.checkpoint_every, seed=s.seed, data_seed=s.seed, bf16=use_bf16(bf16), fp16=False,
        use_cpu=not cuda, gradient_checkpointing=s.gradient_checkpointing, report_to=trackers(s.report_to),
        disable_tqdm=True,
        # a data set smaller than one global batch still gives a batch each epoch
        dataloader_drop_last=examples >= s.batch_size, ddp_find_unused_parameters=False, log_level="warning",
        remove_unused_columns=False, **dataloader_settings(cuda),
    )
    if s.gradient_checkpointing:
        kw["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if s.deepspeed is not None:
        from pai_distil_jobs.train.deepspeed_config import zero_config

        if not cuda:
            _skip_deepspeed_cpu_kernel()
        _one_process_group_env()
        kw["deepspeed"] = zero_config(s, world_size(), s.hidden_size, gpu=cuda)
    if s.fsdp is not None:
        kw["fsdp"], kw["fsdp_config"] = True, fsdp_config(s.fsdp)
    return one_device_per_process(cls(**{**kw, **extra, **passed_through(s, cls, {**kw, **extra})}))


def one_device_per_process(args):
    """`args` with at most one GPU for this process, so Trainer never wraps the model in `nn.DataParallel`.

    Why: a process started without a launcher on a node with several visible GPUs gets `n_gpu` = all of
    them from transformers, and DataParallel then replicates the model every step, splits batches behind
    our loss (the reward model's `score_and_likelihood` is not even reachable through it) and cannot
    shard. Under torchrun (`python -m pai_distil_jobs` relaunches distributed stages under it) each
    process has its own GPU and `n_gpu` is already 1; one process in all trains on `cuda:0`."""
    if args.n_gpu > 1:  # reading it sets up the devices (and the process group) as training would
        args._n_gpu = 1
    return args


def fsdp_config(fsdp) -> dict:
    """transformers' `fsdp_config` for our `train.fsdp` (FSDP2, each decoder layer a unit).

    `cpu_ram_efficient_loading`: one process per node reads the checkpoint, the others build the model on
    the meta device, and accelerate broadcasts the weights into the shards (`sharded_load.load_trained`).
    `SHARDED_STATE_DICT`: each rank writes its own shard of the weights and optimizer state (torch's
    distributed checkpoint), instead of gathering both onto rank 0 at every checkpoint; the format
    reshards on load, so a run resumes on another number of GPUs. The final model is still saved whole
    (`sft_train.save_final` switches to a full state dict for it)."""
    return {"version": 2, "reshard_after_forward": fsdp.sharding == "full_shard", "cpu_offload": fsdp.offload,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": True,
            "state_dict_type": "SHARDED_STATE_DICT"}


def dataloader_settings(cuda: bool) -> dict:
    """Batches collated in worker processes on GPU nodes (a node's CPUs shared by its ranks, at most 4
    each), kept alive across epochs and copied from pinned memory. On CPUs none: the cores train."""
    if not cuda:
        return {"dataloader_num_workers": 0, "dataloader_pin_memory": False}
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = min(4, max(1, len(os.sched_getaffinity(0)) // local))
    return {"dataloader_num_workers": workers, "dataloader_pin_memory": True,
            "dataloader_persistent_workers": True, "dataloader_prefetch_factor": 2}


def _one_process_group_env() -> None:
    """A job of one process is not started by torchrun; under DeepSpeed give it the variables torchrun
    would (a group of one forms at once), so the process group DeepSpeed needs (zero.Init while the model
    loads, then the engine) starts from them instead of DeepSpeed falling back on MPI discovery."""
    if "LOCAL_RANK" in os.environ or world_size() != 1:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _skip_deepspeed_cpu_kernel() -> None:
    """On CPUs DeepSpeed would JIT-compile a shared-memory allreduce kernel when its process group
    starts, which needs a C++ toolchain (the job images have none) and minutes of two cores; gloo's
    own allreduce serves. (By module path: the package attribute `deepspeed.comm.torch` is PyTorch.)"""
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


# -- the trainer -------------------------------------------------------------------------------------


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order drawn from (seed, epoch) alone, as accelerate's seedable random
    sampler is: a resumed run skips into the very order the first run had (the stock one draws from the
    global RNG, whose state differs after a resume)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class JobTrainerMixin:
    """Mixed in before a transformers/TRL trainer class: our schedule, curriculum order, atomic
    checkpoints and the divergence check. Set `self.job` (TrainSettings) before training."""

    job: TrainSettings
    _bad_steps = 0

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.job.lr_scheduler != "cosine":  # transformers' own, from lr_scheduler_type and warmup_steps
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            length = self.job.schedule_steps or self.job.max_steps
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  schedule(self.job.warmup_steps, length))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None):
        if self.job.keep_order:
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):  # the lengths it read, drawn in a resumable order
            return SeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths,
                                              seed=self.args.data_seed or self.args.seed)
        return sampler

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        written = Path(self.args.output_dir) / f"{PREFIX}{self.state.global_step}"
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG state, ZeRO shards)
        if self.is_world_process_zero():
            seal_checkpoint(written, self.state.global_step, self.job.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if torch.isfinite(loss.detach()).all():
            self._bad_steps = 0
        else:
            self._bad_steps += 1
            limit = self.job.max_bad_steps * self.args.gradient_accumulation_steps
            if self._bad_steps >= limit:
                raise JobError(f"training diverged: the loss was not finite for {self.job.max_bad_steps} steps in a "
                               f"row (step {self.state.global_step + 1}); lower train.learning_rate "
                               f"({self.args.learning_rate:g}) or check the data")
        return loss


# -- callbacks ---------------------------------------------------------------------------------------

SKIPPED = {"epoch", "total_flos", "num_tokens", "learning_rate", "loss", "grad_norm"}


class JobCallback(TrainerCallback):
    """Our side of the loop: metrics.jsonl and log lines, SIGTERM, and `stop_at`.

    `stop_check(model, step) -> (stop, metrics)` with an `every` attribute is called on rank 0 every
    `every` steps; every rank follows its decision, so no rank waits in a collective the others left.
    """

    def __init__(self, metrics_path: Path, log=print, stop_check=None):
        self.metrics_path, self.log, self.stop_check = Path(metrics_path), log, stop_check
        self.sigterm = self.stopped_early = False
        self._signalled = False
        self._t0 = time.time()
        self._tokens0: float | None = None

    def _on_sigterm(self, *_):
        self._signalled = True

    def on_train_begin(self, args, state, control, **kw):
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._t0, self._step0 = time.time(), state.global_step

    def _write(self, record: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if not state.is_world_process_zero or "train_runtime" in logs:
            return
        elapsed = max(1e-9, time.time() - self._t0)
        rec = {"step": state.global_step}
        if "loss" in logs:
            rec["loss"] = round(float(logs["loss"]), 5)
        if logs.get("grad_norm") is not None:
            rec["grad_norm"] = round(float(logs["grad_norm"]), 4)
        if "learning_rate" in logs:
            rec["lr"] = logs["learning_rate"]
        if "num_tokens" in logs:  # TRL counts the tokens every rank has seen since this process started
            rec["tokens_per_s"] = round(float(logs["num_tokens"]) / elapsed, 1)
        rec.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in logs.items() if k not in SKIPPED})
        self._write(rec)
        shown = "".join(f" {k} {v:g}" for k, v in rec.items()
                        if k not in {"step", "loss", "lr", "tokens_per_s", "grad_norm"} and isinstance(v, int | float))
        line = f"step {state.global_step}/{state.max_steps}"
        if "loss" in rec:
            line += f" loss {rec['loss']:.4f}"
        if "lr" in rec:
            line += f" lr {rec['lr']:.2e}"
        if "tokens_per_s" in rec:
            line += f" {rec['tokens_per_s']:.0f} tok/s"
        self.log(line + shown)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged
        if _any_rank(self._signalled):
            self.sigterm = True
            control.should_save = control.should_training_stop = True
            return control
        check = self.stop_check
        if check and state.global_step % check.every == 0 and state.global_step < state.max_steps:
            reached = False
            if state.is_world_process_zero:
                reached, extra = check(_unwrap(model), state.global_step)
                self._write({"step": state.global_step, **extra})
            model.train()  # decoding switched it to eval mode
            if _from_rank0(reached):
                self.stopped_early = True
                control.should_training_stop = True
        return control


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _any_rank(flag: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _from_rank0(flag: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def _collective_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def trackers(report_to) -> list[str] | str:
    """`report_to` for transformers: the trackers of `train.report_to` but TensorBoard, whose event files
    our own callback writes where PAI looks (`tensorboard_callback`). One not installed is refused in one
    line here, before the model loads (transformers would fail at the first step, in every process)."""
    import importlib.util

    from pai_distil.core.config.training import TRACKER_PACKAGES

    for name in report_to:
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise JobError(f"train.report_to names {name}, but the {TRACKER_PACKAGES[name]} package is not installed "
                           f"in the job's image; install it there, or drop {name} from train.report_to")
    return [name for name in report_to if name != "tensorboard"] or "none"


def tensorboard_callback(output: Path):
    """TensorBoard event files in `output/tensorboard` (PAI shows TensorBoard for a job's output folder)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(SummaryWriter(log_dir=str(Path(output) / "tensorboard")))


def _truncate_metrics(metrics_path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: those steps run again."""
    if not metrics_path.exists():
        return
    keep = [line for line in metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    metrics_path.write_text("".join(line + "\n" for line in keep))


def fit(trainer, callback: JobCallback, checkpoint_dir: Path, log=print) -> bool:
    """Train to the end, resuming from the newest complete checkpoint. False when stopped by SIGTERM
    (a checkpoint was saved)."""
    checkpoint_dir = Path(checkpoint_dir)
    trainer.remove_callback(PrinterCallback)  # our callback logs each step once, in our format
    if trainer.is_world_process_zero():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for name in remove_unfinished(checkpoint_dir):
            log(f"removed {name}: a save the last run did not finish")
        resumable_checkpoint(checkpoint_dir, log)  # sets aside the newer ones that fail their manifest
    trainer.accelerator.wait_for_everyone()
    ckpt = newest_checkpoint(checkpoint_dir)  # the same for every rank, now that rank 0 has verified
    step = int(ckpt.name.split("-")[1]) if ckpt is not None else 0
    if trainer.is_world_process_zero() and ckpt is not None:
        _truncate_metrics(callback.metrics_path, step)
        log(f"resuming from checkpoint {ckpt.name} (step {step} of {trainer.args.max_steps})")
    if ckpt is not None and step >= trainer.args.max_steps and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        # Every step is done (a job stopped after its last checkpoint, e.g. by a SIGTERM at the last step):
        # transformers, resumed there, would take one step more. Load the weights and finish.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(ckpt))
        trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
        return True
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    if torch.cuda.is_available() and trainer.is_world_process_zero():
        log(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated on rank 0")
    if callback.sigterm:
        log(f"SIGTERM: saved checkpoint at step {trainer.state.global_step}; exiting")
        return False
    return True
