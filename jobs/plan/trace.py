"""One training step at real shapes on fake tensors: models built from config.json with no weights,
sharded with FSDP2 over a fake process group, traced for memory and FLOPs.

Why fake tensors: no GPU is needed to know whether Qwen3-8B at 32k tokens fits an 80 GiB GPU. Under
`FakeTensorMode` every op runs its shape logic only, so the stage's own loss code runs as it would
on the node, in seconds on a CPU. Memory is read by torch's `FSDPMemTracker` (or `MemTracker` without
FSDP), FLOPs by `FlopCounterMode`, as torchtitan's estimator does.

Optimizer state is not traced: under fake DTensors the tracker counts the step's temporaries at their
global size. Adam's two fp32 moments per trainable element of this rank's shard are exact arithmetic,
so they are added from the shard sizes instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

GIB = 2 ** 30
aten = torch.ops.aten


# -- attention FLOPs on CPU kernels ----------------------------------------------------------------------
# FlopCounterMode knows the CUDA attention kernels; a trace on CPU runs PyTorch's CPU flash kernel. Its
# FLOPs are the same: QK^T and PV (2 b h s_q s_k d each) forward, twice that backward. Causal masking is
# counted in full, as MFU conventions do (torchtitan's 12 L H Q T per token).

def _attention_flops(q, k, v) -> int:
    b, h, s_q, d = q
    return 4 * b * h * s_q * k[-2] * d


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)


# -- fake tensors that know their values ------------------------------------------------------------------
# Batches are small (ids, masks, labels) and real: the loss code picks trained positions with
# `nonzero`, whose size only values tell. With `fake_tensor_propagate_real_tensors` the fake copies
# carry them, so every shape downstream is the one the node would see.

_MODE = None
_MESH = None


def _value_mode():
    """A FakeTensorMode that also runs an op for real when all its tensor inputs carry values (the batch and
    what is computed from it; factories such as the weights stay storage-free), and answers ops whose
    output shape depends on values (`nonzero`, `item`) from the real result: every shape stays an int."""
    import torch._functorch.config as functorch_config
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.utils import _pytree as pytree

    by_value = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)

    class ValueFakeMode(FakeTensorMode):
        def dispatch(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            fakes = [a for a in pytree.arg_tree_leaves(*args, **kwargs) if isinstance(a, FakeTensor)]
            real = bool(fakes) and all(a.real_tensor is not None for a in fakes)
            if func is aten._local_scalar_dense.default and not real:
                return 0.0 if args[0].dtype.is_floating_point else 0  # a logged metric's .item(): any number does
            if real and any(tag in func.tags for tag in by_value):
                real_args, real_kwargs = pytree.tree_map_only(FakeTensor, lambda t: t.real_tensor, (args, kwargs))
                out = func(*real_args, **real_kwargs)
                return pytree.tree_map_only(torch.Tensor, lambda t: self.from_tensor(t, static_shapes=True), out)
            self.propagate_real_tensors = real
            try:
                return super().dispatch(func, types, args, kwargs)
            finally:
                self.propagate_real_tensors = True

    with functorch_config.patch(fake_tensor_propagate_real_tensors=True):
        return ValueFakeMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def fake_mode():
    """The fake-tensor mode a plan runs in: models without storage, batches with their values."""
    global _MODE

    _MODE = _value_mode()
    try:
        with _MODE:
            yield _MODE
    finally:
        _MODE = None


def concrete(make: Callable[[], dict]) -> dict:
    """`make()`'s tensors built for real (they are small), then entered into the fake mode with their values."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        values = make()
    return {k: _MODE.from_tensor(v, static_shapes=True) if _MODE is not None else v for k, v in values.items()}


# -- the fake world --------------------------------------------------------------------------------------


def fake_world(world: int) -> None:
    """A fake process group of `world` ranks, this process rank 0: collectives return at once with
    tensors of the right shape, so FSDP2 shards as it would on the node."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from torch.distributed.device_mesh import init_device_mesh

    global _MESH
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    _MESH = init_device_mesh("cpu", (world,))  # outside the fake mode: the mesh's coordinates are values


def fake_mesh():
    """The fake world's device mesh (`fake_world` makes it)."""
    return _MESH


def build_model(config: dict, dtype: torch.dtype = torch.float32):
    """A causal LM from its config.json values, on fake tensors when a FakeTensorMode is active."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "dtype", "model_type",
                                                             "transformers_version")}
    cfg = AutoConfig.for_model(config["model_type"], **values)
    cfg._attn_implementation = "sdpa"  # on the node flash-attention (varlen): the same FLOPs, no [T, T] mask
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def decoder_layers(model) -> list:
    """The transformer blocks FSDP wraps one by one (accelerate's TRANSFORMER_BASED_WRAP does the same)."""
    names = set(getattr(model, "_no_split_modules", None) or getattr(getattr(model, "lm", None), "_no_split_modules",
                                                                       None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_fsdp(model, world: int, full_shard: bool) -> None:
    """FSDP2 as the job applies it: each block, then the root; bf16 compute over fp32 master shards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = _MESH
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=full_shard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=full_shard)


def local_numel(params) -> int:
    """Elements of these parameters held by this rank (a DTensor's local shard, else the whole)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)


# -- tracing ---------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """Peak memory of one micro-batch step by kind (GiB), and its FLOPs."""

    memory: dict[str, float] = field(default_factory=dict)
    peak: float = 0.0
    flops: int = 0


_FSDP_KINDS = {"Sharded Param": "parameters", "Unsharded Param": "parameters", "All Gather": "parameters",
               "Buffer": "parameters", "Sharded Grad": "gradients", "Unsharded Grad": "gradients",
               "Reduce Scatter": "gradients", "Activation": "activations", "Temp": "temporaries",
               "Inputs": "temporaries", "OptState": "optimizer", "Parameter": "parameters", "Gradient": "gradients",
               "Optstate": "optimizer", "Other": "temporaries"}


def _hooking_trained_only(tracker_cls):
    """`tracker_cls` hooking the gradients of trained parameters only: MemTracker hooks every parameter of
    every module it meets, and a frozen one (LoRA's base, a reference, a teacher) cannot take a hook."""
    from torch.distributed._tools.mem_tracker import _MemRefType

    class TrainedOnly(tracker_cls):
        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
            sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for p in module.parameters() if install_grad_hooks else ():
                if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    def seen(grad):
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[p] = (p.register_hook(seen),
                                                           p.register_post_accumulate_grad_hook(lambda q: seen(q.grad)))
            return sizes

    return TrainedOnly


@contextlib.contextmanager
def traced(root, inputs: tuple = ()):
    """Track the memory of what runs inside; yields the `Trace`, filled on exit. `root` is the module whose
    parameters and gradients are named as such (FSDP-wrapped or not)."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.fsdp import FSDPModule

    if isinstance(root, FSDPModule):
        tracker = FSDPMemTracker(root)
        tracker.track_inputs(inputs)
    else:
        tracker = _hooking_trained_only(MemTracker)()
        tracker.track_external(root, *inputs)
    result = Trace()
    with tracker:
        yield result
    snapshot = tracker.get_tracker_snapshot("peak")
    by_device = next(iter(snapshot.values()), {})
    for kind, nbytes in by_device.items():
        if kind == "Total":
            continue
        name = _FSDP_KINDS.get(getattr(kind, "value", str(kind)), "temporaries")
        result.memory[name] = result.memory.get(name, 0.0) + nbytes / GIB
    result.peak = by_device.get("Total", 0) / GIB


def count_flops(run: Callable[[], None]) -> int:
    """FLOPs of `run()`. A pass of its own: under the memory tracker, FlopCounterMode keeps every layer's
    recomputed activations alive in the tracker's books (2.4 GiB a layer of Qwen3-8B at 2 x 8192)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()
