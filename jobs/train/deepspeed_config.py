"""DeepSpeed ZeRO configs generated from a stage's `train` settings.

Users write `train.deepspeed: {stage: 2|3, bf16, offload_optimizer, offload_param}`; the batch
sizes, accumulation, clipping and precision follow from the rest of `train`, so the DeepSpeed
config cannot disagree with the trainer (transformers' DeepSpeed integration) that feeds it.
The trainer keeps its own AdamW and schedule (the same as without DeepSpeed); ZeRO partitions
their state. `bf16` left unset follows the trainer ("auto": on where the GPU supports it).
"""

from __future__ import annotations

from typing import Any

from pai_distil.core.config import Training

GRAD_CLIP = 1.0  # the trainer's clipping (TrainSettings.grad_clip)
BUCKET = 50_000_000  # elements per communication bucket: small models, small buckets


def zero_config(train: Training, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `train` (a `Training`, or the job's settings with the same fields) on
    `world_size` processes; train.deepspeed must be set."""
    ds = train.deepspeed
    if ds is None:
        raise ValueError("train.deepspeed is not set")
    accum = getattr(train, "gradient_accumulation_steps", 1)
    micro = max(1, train.batch_size // (world_size * accum))  # each rank's share of every global batch
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "contiguous_gradients": True,
        "overlap_comm": False,
        "reduce_bucket_size": BUCKET,
        "allgather_bucket_size": BUCKET,
    }
    if ds.stage == 3:
        zero.update({
            "stage3_gather_16bit_weights_on_model_save": True,  # the saved checkpoint is whole
            "stage3_prefetch_bucket_size": BUCKET,
            "stage3_param_persistence_threshold": 10_000,
        })
        zero.pop("allgather_bucket_size")
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_batch_size": micro * world_size * accum,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": GRAD_CLIP,
        "bf16": {"enabled": "auto" if ds.bf16 is None else ds.bf16},
        "zero_optimization": zero,
        # the trainer's torch AdamW, partitioned by ZeRO (also when offloaded to the CPU)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000_000,  # the trainer logs its own metrics
        "wall_clock_breakdown": False,
    }
