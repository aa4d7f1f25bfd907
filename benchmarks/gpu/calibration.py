"""The plan beside the measurement: what `pai-distil plan` predicts for a run's exact config, and how far
the GPU's numbers are from it.

The plan traces the stage's own training step on fake tensors (in a child process, on the CPU), so it
runs in a background thread while the job has the GPU. From it the check takes:

- memory: `peak_gib` (everything on the GPU) and `peak_gib - runtime` (CUDA context, NCCL buffers and
  allocator slack, which no allocation shows), the share comparable to torch's
  `max_memory_allocated()`. A colocated vLLM engine allocates its weights and KV cache through the
  same process's torch allocator, so the plan's `vllm` share stays in that figure;
- time: `flops_per_step` over the GPU's dense bf16 peak (the plan's `step_seconds` at MFU 1.0,
  unrounded), the floor of a step on this GPU;
- MFU: the plan's `flops_per_step` (FlopCounterMode over the stage's own forward and backward:
  attention, the KD / reward heads and gradient checkpointing's recompute counted) over the measured
  seconds per optimizer step times the GPU's dense bf16 peak from the plan's GPU table.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor

from pai_distil.core.errors import UserError
from pai_distil.run.plan import DEFAULT_GPU, GPUS, TRAINING, gpu_spec, plan_stage

PLANNER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plan")  # each child traces on one thread


def device_gpu() -> dict:
    """The plan's GPU for the GPU torch sees (its measured memory), at MFU 1.0; an unknown GPU, or none
    (`--smoke` on CPU), is planned as the default type, which `assumed` says."""
    import torch

    if not torch.cuda.is_available():
        return {**gpu_spec(DEFAULT_GPU, mfu=1.0), "device": "cpu", "assumed": True}
    device = torch.cuda.get_device_name(0)
    memory = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    known = [k for k in GPUS if re.search(rf"\b{re.escape(k)}\b", device.lower())]
    name = max(known, key=len) if known else DEFAULT_GPU
    return {**gpu_spec(name, memory, mfu=1.0), "device": device, "assumed": not known}


def plan_later(stage: str, config: dict, inputs: dict, gpu: dict) -> Future | None:
    """The plan of one run on one GPU, traced in the background; None for a stage that trains nothing."""
    if stage not in TRAINING:
        return None
    spec = {k: gpu[k] for k in ("name", "memory_gib", "mfu")}
    return PLANNER.submit(plan_stage, stage, config, {k: str(v) for k, v in inputs.items()}, nodes=1, gpus=1,
                          gpu=gpu_spec(**spec))


def plan_of(future: Future | None) -> dict:
    """The plan's answer, or {"plan_error": why} (a plan that fails is reported, never lost with the run)."""
    if future is None:
        return {"plan_error": "not a training stage: nothing to plan"}
    try:
        return future.result()
    except UserError as e:
        return {"plan_error": str(e)}
    except Exception as e:  # broad: a bug in the trace must not cost the measurements beside it
        return {"plan_error": f"{type(e).__name__}: {e}"}


def calibrate(result: dict, plan: dict, gpu: dict) -> dict:
    """`result` with the plan's predictions beside its measurements, their ratio and the MFU."""
    if "plan_error" in plan:
        return {**result, **plan}
    memory = plan["memory_gib"]
    allocated = plan["peak_gib"] - memory.get("runtime", 0.0)
    measured, secs = result.get("peak_allocated_gib"), result.get("seconds_per_step")
    result.update(
        plan={k: plan.get(k) for k in ("peak_gib", "memory_gib", "flops_per_step", "step_seconds", "tokens_per_second",
                                       "micro_batch", "accumulation", "tokens_per_row", "sharding", "fits", "notes")},
        plan_peak_gib=plan["peak_gib"], plan_allocated_gib=round(allocated, 2),
        allocated_ratio=round(measured / allocated, 3) if measured and allocated else None,
        plan_seconds_at_mfu_1=_sig(plan["flops_per_step"] / (gpu["tflops"] * 1e12)),
        mfu=_sig(plan["flops_per_step"] / (secs * gpu["tflops"] * 1e12)) if secs else None)
    return result


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # the plan rounds step_seconds to ms: nothing left of a tiny --smoke step


def _f(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


HEADER = (f"{'run':16s} {'rc':>4s} {'wall s':>6s} {'plan GiB':>8s} {'plan alloc':>10s} {'alloc GiB':>9s} "
          f"{'smi GiB':>7s} {'ratio':>6s} {'plan s@1':>8s} {'s/step':>7s} {'MFU':>6s} {'tok/s':>8s}")


def row(r: dict) -> str:
    """One line of the table: a run's predictions and measurements; or kill-and-resume's verdict."""
    if r["name"] == "kill-and-resume":
        return (f"{'kill-and-resume':16s} {_f(r.get('rc'), 'd'):>4s} killed at step {r['killed'].get('at_step', '-')}, "
                f"newest {r.get('newest_complete_at_kill')}, resumed from {r.get('resumed_from')}: "
                f"{'ok' if r.get('ok') else 'FAILED'}")
    rc = "plan" if r.get("plan_only") else _f(r.get("rc"), "d")
    line = (f"{r['name']:16s} {rc:>4s} {_f(r.get('wall_s'), '6.0f'):>6s} {_f(r.get('plan_peak_gib'), '8.2f'):>8s} "
            f"{_f(r.get('plan_allocated_gib'), '10.2f'):>10s} {_f(r.get('peak_allocated_gib'), '9.2f'):>9s} "
            f"{_f(r.get('peak_nvidia_smi_gib'), '7.2f'):>7s} {_f(r.get('allocated_ratio'), '6.2f'):>6s} "
            f"{_f(r.get('plan_seconds_at_mfu_1'), '8.3g'):>8s} {_f(r.get('seconds_per_step'), '7.3f'):>7s} "
            f"{_f(r.get('mfu'), '6.1%'):>6s} {_f(r.get('tokens_per_s'), '8.0f'):>8s}")
    if r.get("skipped"):
        return line + f"  (skipped: {r['skipped']})"
    return line + (f"  (plan: {r['plan_error']})" if r.get("plan_error") else "")


def table(results: list[dict]) -> str:
    return "\n".join([HEADER] + [row(r) for r in results])
