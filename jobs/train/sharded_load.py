"""Models loaded straight into the layout and precision they train in.

Why the trainer's arguments come first: building `TrainingArguments` starts the process group and
the DeepSpeed / FSDP state, and `from_pretrained` looks at both. Under ZeRO-3 (HfDeepSpeedConfig
alive) it builds the model inside `deepspeed.zero.Init`, so every rank materialises only its
partition and rank 0 alone reads the files. Under FSDP it finds `cpu_ram_efficient_loading`: one
process per node reads the weights, the others build the model on the meta device, and accelerate
broadcasts rank 0's weights into the shards when it wraps the model. Loaded the other way round,
every rank holds the whole model in fp32 host memory first (32 GB per rank for an 8B model).

The dtype at load (`load_dtype`) is bf16 wherever something else keeps the fp32 master weights,
fp32 where the weights themselves are the optimizer's master copy:

| run                  | trained model                                       | reference / teacher       |
|----------------------|-----------------------------------------------------|---------------------------|
| CPU (test bench)     | fp32, as ever (bf16 only with DeepSpeed + bf16)     | fp32; bf16 if train.bf16  |
| DDP on GPUs          | fp32 straight onto LOCAL_RANK's GPU: torch AdamW    | bf16 on LOCAL_RANK's GPU  |
|                      | updates these weights, and bf16 ones lose updates   |                           |
|                      | of ~1e-5 relative size (autocast computes in bf16)  |                           |
| DDP + LoRA           | bf16 base (frozen); PEFT keeps the adapters in fp32 | the model, adapter off    |
| DeepSpeed, bf16      | bf16: DeepSpeed's bf16 optimizer keeps fp32 master  | ZeRO-3: partitioned too;  |
|                      | partitions. ZeRO-3 partitions at load; ZeRO-2 loads | ZeRO-2: whole, bf16, on   |
|                      | onto LOCAL_RANK's GPU                               | each GPU                  |
| FSDP2, bf16          | bf16 on the host, read once per node, meta on the   | bf16, each decoder layer  |
|                      | other ranks; accelerate upcasts rank 0's copy to    | sharded (`shard_frozen`)  |
|                      | fp32 before sharding: fp32 sharded master weights,  |                           |
|                      | bf16 compute (MixedPrecisionPolicy)                 |                           |

So no rank ever holds a whole fp32 model it does not train, and under ZeRO-3 / FSDP none holds a
whole trained model on its GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pai_distil_jobs.models.models import load_model


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def fsdp_run(args) -> bool:
    """The arguments ask for FSDP and there are GPUs to run it on (on CPUs the stage refuses it)."""
    return getattr(args, "fsdp_plugin_args", None) is not None and torch.cuda.is_available()


def zero3_run(args) -> bool:
    ds = getattr(args, "hf_deepspeed_config", None)
    return bool(args.deepspeed) and ds is not None and ds.is_zero3()


def load_dtype(args, lora: bool = False) -> torch.dtype:
    """The dtype the trained model loads in (see the module docstring's table)."""
    if not args.bf16:
        return torch.float32
    return torch.bfloat16 if (args.deepspeed or fsdp_run(args) or lora) else torch.float32


def frozen_dtype(args) -> torch.dtype:
    """A model that only runs forward passes (DPO's reference, a teacher): bf16 under bf16 training."""
    return torch.bfloat16 if args.bf16 else torch.float32


def _device_map(args) -> dict | None:
    """This rank's GPU for a model every rank holds whole (DDP, ZeRO-2), so it never passes through host
    memory; None where zero.Init or FSDP place it, and on CPUs."""
    if not torch.cuda.is_available() or zero3_run(args) or fsdp_run(args):
        return None
    return {"": args.device.index or 0}  # a GPU index: the Trainer sees the model on its own device


def load_trained(spec: str | Path, args, seed: int = 0, attn_implementation: str | None = None,
                 lora: bool = False):
    """The model to train and its tokenizer, after `args` (TrainingArguments or a TRL config) exist."""
    dtype = load_dtype(args, lora)
    if fsdp_run(args):
        from accelerate.utils import enable_fsdp_ram_efficient_loading

        enable_fsdp_ram_efficient_loading()  # transformers reads it at load; accelerate broadcasts at wrap
        return load_model(spec, seed=seed, attn_implementation=attn_implementation, dtype=dtype,
                          meta=local_rank() != 0)
    return load_model(spec, seed=seed, attn_implementation=attn_implementation, dtype=dtype,
                      device_map=_device_map(args))


def load_frozen(spec: str | Path, args, seed: int = 0, attn_implementation: str | None = None):
    """A model that only runs forward passes, in eval mode with no gradients: real weights on every
    rank (FSDP shards them in `shard_frozen`; under ZeRO-3 zero.Init partitions them at load).

    Under FSDP every rank reads it: `cpu_ram_efficient_loading` (set by `load_trained`) would make
    transformers build it on the meta device on all but each node's first rank, and accelerate broadcasts
    weights only into the model it prepares for training, so those ranks would hold no weights at all."""
    efficient = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    if efficient is not None:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "False"
    try:
        model, tokenizer = load_model(spec, seed=seed, attn_implementation=attn_implementation,
                                      dtype=frozen_dtype(args), device_map=_device_map(args))
    finally:
        if efficient is not None:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = efficient
    model.eval().requires_grad_(False)
    return model, tokenizer


def load_policy_and_reference(spec: str | Path, args, seed: int = 0, attn_implementation: str | None = None,
                              lora: bool = False, reference: bool = True):
    """The model to train and its frozen reference (DPO's, GRPO's KL term), after `args`. The reference is
    None with LoRA (the policy with its adapter off) or when not asked for; otherwise bf16 under bf16
    training and sharded as the policy is (`shard_frozen`; under ZeRO-3 the trainer's `prepare_deepspeed`
    partitions it), never a second fp32 copy of the whole model on each GPU. OSError: cannot be loaded."""
    model, _ = load_trained(spec, args, seed=seed, attn_implementation=attn_implementation, lora=lora)
    if lora or not reference:
        return model, None
    frozen, _ = load_frozen(spec, args, seed=seed, attn_implementation=attn_implementation)
    return model, shard_frozen(frozen, args)


def shard_frozen(model, args, accelerator=None):
    """`model` (from `load_frozen`) placed for forward passes beside the trained one; returns the
    module to call.

    FSDP: each decoder layer is its own unit, gathered one at a time and freed after it, and the
    decoder wraps them; the embeddings and LM head stay whole on each GPU (about 1.2 GB each for
    Qwen3-8B in bf16), so the decoder and the head can be called apart (a top-k over chunks of
    positions never forms all logits). A caller that runs the whole model (TRL's DPO reference) gets
    its root wrapped by TRL as well. ZeRO-3: `trl.models.prepare_deepspeed` with `accelerator`
    (DPOTrainer does this itself for its reference) puts hooks on the model's modules that gather
    each one's partition as it runs; the model itself is returned (the engine's own `config` would
    hide the model's), holding its engine. Otherwise the model goes to args.device.
    """
    if fsdp_run(args):
        return shard_frozen_fsdp(model).to(args.device)
    if zero3_run(args):
        if accelerator is None:
            return model
        from trl.models import prepare_deepspeed

        engine = prepare_deepspeed(model, accelerator)
        object.__setattr__(engine.module, "_ds_engine", engine)  # kept alive, not registered as a submodule
        return engine.module
    return model.to(args.device)


def model_hidden_size(spec: str | Path) -> int:
    """The hidden size of a preset or a checkpoint, from its config alone (no weights read)."""
    from pai_distil.core.presets import PRESETS, is_preset, preset_name

    spec = str(spec)
    if is_preset(spec):
        return int(PRESETS[preset_name(spec)]["hidden"])
    from transformers import AutoConfig

    from pai_distil_jobs.models.hub import load_kwargs

    config = AutoConfig.from_pretrained(spec, **load_kwargs(spec))
    return int(getattr(config.get_text_config(), "hidden_size"))


def parameter_count(model) -> int:
    """Parameters of the whole model, also when ZeRO-3 holds a partition of each (`ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def release_sharding() -> None:
    """Forget the run's ZeRO-3 config, so models loaded after training (a report on rank 0 alone) load
    whole instead of entering `zero.Init`, a collective the other ranks never join."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def shard_frozen_fsdp(model, mesh=None):
    """`shard_frozen`'s FSDP layout (`pai-distil plan` passes its fake mesh): each decoder layer a unit, the
    decoder over them, the embeddings and the LM head whole."""
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    whole = {p for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    fully_shard(decoder, mesh=mesh, ignored_params=whole)
    return model
