"""A stage's plan: trace its step, add what a trace cannot see, and say whether it fits and how fast.

Per rank: parameters, gradients, activations and temporaries as traced; Adam's state from this rank's
shard (exact); frozen models beside the trained one (reference, teacher, reward model, bf16); vLLM's
share of the GPU when it rolls out colocated; and RUNTIME_GIB for what no allocation shows (CUDA
context, NCCL buffers, allocator slack). Time is FLOPs at a stated MFU: communication and rollouts
are not modelled, so the step time is a floor for a run that keeps its GPUs busy.
"""

from __future__ import annotations

import contextlib

import torch

from pai_distil.core.contract import JobError
from pai_distil_jobs.plan.steps import STEPS, Step, trainable_numel
from pai_distil_jobs.plan.trace import GIB, Trace, count_flops, fake_mode, fake_world, traced

RUNTIME_GIB = 1.5
ADAM_BYTES = 8  # two fp32 moments per trained element


class _Step(torch.nn.Module):
    """The step's forward as one module call: MemTracker refuses a top-level module called twice in one
    pass (a teacher's LM head per chunk of positions), not one called twice inside another."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self):
        return self.run()


def trace_step(stage: str, cfg, models: dict, world: int, preset: bool) -> tuple[Step, Trace]:
    """Build the stage's step for `world` processes on fake tensors and trace one micro-batch of it."""
    if stage not in STEPS:
        raise JobError(f"stage {stage} trains nothing; plan a training stage ({', '.join(STEPS)})")
    fake_world(world)
    with fake_mode():
        step = STEPS[stage](cfg, models, world, preset)
        sharded = step.sharding.startswith("FSDP")
        precision = contextlib.nullcontext() if sharded else torch.autocast("cpu", dtype=torch.bfloat16)

        def forward_backward():
            with precision:
                loss = _Step(step.run)()
            loss.backward()

        with traced(step.root, step.inputs) as trace:
            forward_backward()
        trace.flops = count_flops(forward_backward)
        step.trainable = trainable_numel(step.root)
    return step, trace


def _deepspeed(step: Step, train, world: int, memory: dict) -> float:
    """ZeRO's parameters, gradients and optimizer state (not traceable here): bf16 weights (whole at stage 2,
    a shard and two live blocks at stage 3), fp32 gradient partitions, fp32 master weights and Adam's moments
    in the partition (none on the GPU when offloaded)."""
    ds, n = train.deepspeed, step.trainable
    hidden = step.root.config.hidden_size
    block = 12 * hidden * hidden * 2 / GIB
    memory["parameters"] = (2 * n / world / GIB + 2 * block) if ds.stage == 3 else 2 * n / GIB
    memory["gradients"] = 4 * n / world / GIB + 2 * hidden * hidden * 2 / GIB
    return 0.0 if ds.offload_optimizer else 12 * n / world / GIB


def compose(stage: str, step: Step, trace: Trace, train, world: int, gpu: dict) -> dict:
    """Per-rank memory, time and cost of the planned run, and whether it fits `gpu["memory_gib"]`."""
    memory = {k: trace.memory.get(k, 0.0) for k in ("parameters", "gradients", "activations", "temporaries")}
    analytic = ["optimizer"]
    offload = bool(getattr(getattr(train, "fsdp", None), "offload", False))
    if getattr(train, "deepspeed", None):
        memory["optimizer"] = _deepspeed(step, train, world, memory)
        analytic += ["parameters", "gradients"]
    else:
        memory["optimizer"] = 0.0 if offload else ADAM_BYTES * step.trainable / GIB
        # the traced micro-batch starts with no gradients; the next ones (and the optimizer step) hold them all
        memory["gradients"] = max(memory["gradients"], 4 * step.trainable / GIB)
        if step.sharding.startswith("DDP"):
            memory["gradients"] += 4 * step.trainable / GIB  # DDP's bucket copy of every gradient
    memory["frozen models"] = step.frozen_gib
    memory["vllm"] = step.vllm_share * gpu["memory_gib"]
    memory["runtime"] = RUNTIME_GIB
    peak = sum(memory.values())
    flops = trace.flops * step.accumulation
    seconds = flops / (gpu["tflops"] * 1e12 * gpu["mfu"])
    result = {
        "stage": stage, "processes": world, "sharding": step.sharding, "micro_batch": step.micro,
        "accumulation": step.accumulation, "rows_per_step": step.rows_per_step, "tokens_per_row": step.tokens_per_row,
        "memory_gib": {k: round(v, 2) for k, v in memory.items()}, "peak_gib": round(peak, 2),
        "traced_peak_gib": round(trace.peak, 2), "analytic": analytic, "budget_gib": gpu["memory_gib"],
        "fits": peak <= gpu["memory_gib"], "flops_per_step": flops, "step_seconds": round(seconds, 3),
        "tokens_per_second": round(step.rows_per_step * step.tokens_per_row / seconds, 1),
        "mfu": gpu["mfu"], "gpu": gpu["name"], "max_steps": train.max_steps,
        "gpu_hours": round(seconds * train.max_steps * world / 3600, 2), "notes": step.notes,
    }
    if not result["fits"]:
        result["knob"] = knob(step, train, memory, peak, gpu["memory_gib"], world)
    return result


def knob(step: Step, train, memory: dict, peak: float, budget: float, world: int) -> str:
    """The settings that bring this step under `budget`, cheapest first (a smaller micro-batch,
    checkpointing, sharding, offload), as many as it takes; else what is left to change."""
    act = memory["activations"] + memory["temporaries"]
    state = memory["parameters"] + memory["gradients"] + memory["optimizer"]
    fsdp, ds = getattr(train, "fsdp", None), getattr(train, "deepspeed", None)
    options = []  # (setting, GiB it saves)
    if step.micro > 1:
        options.append((f"train.gradient_accumulation_steps: {step.accumulation * step.micro} (micro-batch 1)",
                        act * (1 - 1 / step.micro)))
        act /= step.micro
    if not train.gradient_checkpointing:
        options.append(("train.gradient_checkpointing: true", act * 0.7))
    if world > 1 and not (fsdp or ds) and not getattr(train, "lora", None):
        options.append(("train.fsdp: {sharding: full_shard}", state * (1 - 1 / world)))
    elif fsdp and fsdp.sharding != "full_shard":
        options.append(("train.fsdp.sharding: full_shard", memory["parameters"] * (1 - 1 / world)))
    elif fsdp and not fsdp.offload:
        options.append(("train.fsdp.offload: true", memory["optimizer"]))
    chosen, over = [], peak - budget
    for setting, saves in options:
        if saves > 0.05:
            chosen.append(setting)
            over -= saves
        if over <= 0:
            return "set " + " and ".join(chosen)
    rest = f"lower train.max_length below {step.tokens_per_row}, use train.lora, or use more GPUs"
    return ("set " + " and ".join(chosen) + f"; that still leaves {over:.0f} GiB over: " + rest) if chosen else rest
