"""DeepSpeed ZeRO configs generated from a stage's `train` settings.

Users write `train.deepspeed: {stage: 2|3, bf16, offload_optimizer, offload_param}`; the batch
sizes, accumulation, clipping and precision follow from the rest of `train`, so the DeepSpeed
config cannot disagree with the trainer (transformers' DeepSpeed integration) that feeds it.
`bf16` left unset follows the trainer ("auto": on where the GPU supports it).

Why these values, on GPUs:
- `overlap_comm`: gradient reduction runs while the backward pass goes on (DeepSpeed's own advice).
- buckets sized by the model, as DeepSpeed's "auto" does: `reduce_bucket_size` = hidden²,
  `stage3_prefetch_bucket_size` = 0.9 hidden², `stage3_param_persistence_threshold` = 10 hidden.
  They are written out (not "auto") because ZeRO-3's `zero.Init` reads the config when
  `from_pretrained` runs, before transformers could fill "auto" from a model it has not built yet.
  Tiny presets get at least `MIN_BUCKET` elements, so CPU runs do not issue thousands of small messages.
- optimizer offload: DeepSpeed's own `DeepSpeedCPUAdam` (AdamW, vectorised C++; several times torch's
  AdamW on the CPU), built by DeepSpeed because the optimizer is named in the config; the learning
  rate, betas, eps and decay are the trainer's ("auto"), the schedule stays the trainer's. Offloaded
  state sits in pinned memory, so copies to and from the GPU are asynchronous DMA.
On CPUs (the test bench, the CPU image) none of that applies: no CUDA streams to overlap, no
pinned memory, no C++ toolchain to build CPU Adam; the trainer's torch AdamW is partitioned as is.

Resuming on another world size: a ZeRO checkpoint holds one optimizer partition per rank and loads
only at the world size that wrote it. Convert it once with DeepSpeed's
`python -m deepspeed.checkpoint.ds_to_universal --input_folder <step>/global_stepN --output_folder
<step>/global_stepN_universal` and resume with `"checkpoint": {"load_universal": true}`; FSDP's
sharded checkpoints (DCP) reshard by themselves (see `trainer.training_arguments`).
"""

from __future__ import annotations

from typing import Any

from pai_distil.core.config import Training

GRAD_CLIP = 1.0  # the trainer's clipping (TrainSettings.grad_clip)
MIN_BUCKET = 1_000_000  # elements: the smallest communication bucket (tiny presets)
AUTO = "auto"  # a value transformers fills from the trainer's arguments


def bucket_sizes(hidden_size: int | None, stage: int) -> dict[str, Any]:
    """Communication buckets from the model's hidden size, as DeepSpeed's "auto" sizes them; "auto"
    when the size is not known (transformers then fills them from the model at `deepspeed_init`)."""
    if hidden_size is None:
        sizes: dict[str, Any] = {"reduce_bucket_size": AUTO}
        if stage == 3:
            sizes.update(stage3_prefetch_bucket_size=AUTO, stage3_param_persistence_threshold=AUTO)
        else:
            sizes["allgather_bucket_size"] = 500_000_000  # DeepSpeed's default
        return sizes
    square = hidden_size * hidden_size
    sizes = {"reduce_bucket_size": max(square, MIN_BUCKET)}
    if stage == 3:
        sizes.update(stage3_prefetch_bucket_size=max(int(0.9 * square), MIN_BUCKET),
                     stage3_param_persistence_threshold=10 * hidden_size)
    else:
        sizes["allgather_bucket_size"] = max(square, MIN_BUCKET)
    return sizes


def zero_config(train: Training, world_size: int, hidden_size: int | None = None, gpu: bool = True) -> dict[str, Any]:
    """The DeepSpeed config for `train` (a `Training`, or the job's settings with the same fields) on
    `world_size` processes; train.deepspeed must be set.

    Args:
        hidden_size (int, optional): the model's hidden size, which sizes the buckets. Defaults to "auto".
        gpu (bool, optional): GPUs (overlap, pinned memory, DeepSpeedCPUAdam) or CPUs. Defaults to True.
    """
    ds = train.deepspeed
    if ds is None:
        raise ValueError("train.deepspeed is not set")
    accum = getattr(train, "gradient_accumulation_steps", None) or 1  # None: a `Training` not yet filled by kind
    micro = max(1, train.batch_size // (world_size * accum))  # each rank's share of every global batch
    zero: dict[str, Any] = {"stage": ds.stage, "contiguous_gradients": True, "overlap_comm": gpu,
                            **bucket_sizes(hidden_size, ds.stage)}
    if ds.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the saved checkpoint is whole
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    config: dict[str, Any] = {
        "train_batch_size": micro * world_size * accum,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": GRAD_CLIP,
        "bf16": {"enabled": AUTO if ds.bf16 is None else ds.bf16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,  # the trainer logs its own metrics
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer and gpu:  # DeepSpeed builds DeepSpeedCPUAdam for an offloaded AdamW
        config["optimizer"] = {"type": "AdamW", "params": {"lr": AUTO, "betas": AUTO, "eps": AUTO,
                                                           "weight_decay": AUTO}}
    else:  # the trainer's torch AdamW, partitioned by ZeRO (also when offloaded on CPUs)
        config.update(zero_allow_untested_optimizer=True, zero_force_ds_cpu_optimizer=False)
    return config
