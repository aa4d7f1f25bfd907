"""`pai-distil plan`: will a training stage fit the GPUs it is given, and how long will it take?

The client stays torch-free: it validates the config, resolves every model the step holds to a
config.json (a checkpoint's own, or a shipped shape), and asks a child process
(`python -m pai_distil_jobs.plan`) to trace the stage's own training step on fake tensors at those
shapes. The answer is per-rank peak memory by kind, FLOPs, a step time at a stated MFU and the run's
GPU-hours.

    from pai_distil.run.plan import plan_stage
    result = plan_stage("slow-thinking", {"student": {"model": "Qwen/Qwen3-8B"}}, gpus=8)
    result["fits"], result["peak_gib"], result["gpu_hours"]
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from pai_distil.core import model_shapes
from pai_distil.core.errors import UserError
from pai_distil.core.presets import is_preset
from pai_distil.core.stages import get_stage

TRAINING = ("slow-thinking", "adaptive-thinking", "reward-model", "dpo", "grpo")


@dataclass(frozen=True)
class GPU:
    """A GPU as the plan sees it: memory and dense bf16 tensor throughput."""

    name: str
    memory_gib: float
    tflops: float


GPUS = {g.name.lower(): g for g in [
    GPU("H800", 80, 989), GPU("H100", 80, 989), GPU("H200", 141, 989), GPU("H20", 96, 148),
    GPU("A800", 80, 312), GPU("A100", 80, 312), GPU("L20", 48, 119.5), GPU("L40S", 48, 362), GPU("A10", 24, 125),
]}
DEFAULT_GPU = "h800"
DEFAULT_MFU = 0.4  # a tuned FSDP run of a dense decoder at 8k+ tokens; measure yours with benchmarks/gpu


def gpu_spec(name: str = DEFAULT_GPU, memory_gib: float | None = None, mfu: float = DEFAULT_MFU) -> dict:
    """The GPU a plan is for; `memory_gib` overrides the type's memory."""
    gpu = GPUS.get(name.lower())
    if gpu is None:
        raise UserError(f"unknown --gpu-type {name!r}; choose one of {', '.join(g.name for g in GPUS.values())}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu} is not a share; give a number in (0, 1], e.g. 0.4")
    return {"name": gpu.name, "memory_gib": memory_gib or gpu.memory_gib, "tflops": gpu.tflops, "mfu": mfu}


def _model_roles(stage: str, cfg, inputs: dict[str, str]) -> dict[str, str]:
    """role -> model reference of every model the stage's training step holds; the trained one first."""
    if stage in ("slow-thinking", "adaptive-thinking"):
        roles = {"student": inputs.get("student") or cfg.student.model}
        distill = cfg.distill
        if distill is not None and distill.mode == "on-policy":
            teacher = distill.teacher.model if distill.teacher and distill.teacher.model else inputs.get("teacher")
            if distill.teacher and distill.teacher.endpoint is not None:
                teacher = None  # a served teacher holds no memory here
            if teacher is not None:
                roles["teacher"] = teacher
            elif distill.teacher is None or distill.teacher.from_input:
                raise UserError("distill on-policy scores with input 'teacher'; pass -i teacher=DIR (a checkpoint) "
                                "so the plan can size it")
        return roles
    if stage == "reward-model":
        source = inputs.get("student") if cfg.init_from_student else None
        return {"model": source or inputs.get("base") or cfg.model.model}
    if stage == "dpo":
        return {"student": inputs.get("student") or cfg.student.model}
    if stage == "grpo":
        roles = {"student": inputs.get("student")}  # grpo's student is an input: a checkpoint, or --shape
        if cfg.reward.rm_weight and cfg.reward.endpoint is None and "reward_model" in inputs:
            roles["reward_model"] = inputs["reward_model"]
        return roles
    raise UserError(f"stage {stage} trains nothing; plan a training stage ({', '.join(TRAINING)})")


def _configs(roles: dict[str, str], shape: str | None) -> tuple[dict, dict, bool]:
    """(role -> config dict or preset name, role -> label, whether the trained model is a preset)."""
    configs, labels = {}, {}
    for i, (role, ref) in enumerate(roles.items()):
        if shape and (i == 0 or ref is None):
            configs[role], labels[role] = model_shapes.shape(shape), shape.lower()
            continue
        if ref is None:
            raise UserError(f"the plan sizes input '{role}' by its config.json; pass -i {role}=DIR (a checkpoint) "
                            "or --shape NAME")
        label, config = model_shapes.resolve(str(ref))
        configs[role], labels[role] = (config if config is not None else label), label
    trained = next(iter(roles))
    return configs, labels, isinstance(configs[trained], str) and is_preset(configs[trained])


def trained_model(stage: str, config: dict, inputs: dict[str, str] | None = None, where: str = "plan") -> str | None:
    """The reference of the model a training stage trains (None when it is an input not given)."""
    from pai_distil.core.config import validate

    spec = get_stage(stage)
    return next(iter(_model_roles(spec.name, validate(spec.config, config, where), inputs or {}).values()))


def plan_stage(stage: str, config: dict, inputs: dict[str, str] | None = None, *, nodes: int = 1, gpus: int = 8,
               gpu: dict | None = None, shape: str | None = None, where: str = "plan") -> dict:
    """The plan of one training stage (see the module docstring); raises UserError for bad input.

    Args:
        stage (str): a training stage's name.
        config (dict): the stage's config, as in its YAML file.
        inputs (dict, optional): input name -> path; checkpoints among them are sized by their config.json.
        nodes (int): nodes of the job. gpus (int): GPUs (processes) per node.
        gpu (dict, optional): `gpu_spec(...)`; defaults to an 80 GiB H800 at MFU 0.4.
        shape (str, optional): a shipped shape for the trained model (and any model that has no config).

    Returns:
        dict: per-rank `memory_gib` by kind, `peak_gib`, `fits`, `knob` (when it does not fit), `step_seconds`,
        `tokens_per_second`, `gpu_hours`, and how the step runs (`processes`, `sharding`, `micro_batch`, ...).
    """
    from pai_distil.core.config import validate

    spec = get_stage(stage)
    cfg = validate(spec.config, config, where)
    configs, labels, preset = _configs(_model_roles(spec.name, cfg, inputs or {}), shape)
    processes = nodes * gpus if spec.distributed else 1
    request = {"stage": spec.name, "config": cfg.model_dump(mode="json"), "models": configs, "labels": labels,
               "preset": preset, "processes": processes, "gpu": gpu or gpu_spec()}
    result = _run_child(request)
    if not spec.distributed and nodes * gpus > 1:
        result["notes"].append(f"{spec.name} runs in one process: {nodes * gpus - 1} of {nodes * gpus} GPUs idle")
    return result


def _run_child(request: dict) -> dict:
    """Trace in `python -m pai_distil_jobs.plan` (torch lives there, never in this process)."""
    proc = subprocess.run([sys.executable, "-m", "pai_distil_jobs.plan"], input=json.dumps(request),
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if answer is None:
        if "No module named" in proc.stderr:
            raise UserError("pai-distil plan traces with the job packages (torch, transformers); install them with "
                            "pip install 'pai-distil[train]'")
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the plan's trace failed: {last}")
    if "error" in answer:
        raise UserError(answer["error"])
    return answer


def refusal(result: dict) -> str:
    """One line: why the planned step does not fit its GPU, and the knob that makes it fit."""
    biggest = max(result["memory_gib"].items(), key=lambda kv: kv[1])
    return (f"{result['stage']} needs {result['peak_gib']:.1f} GiB per GPU, more than the {result['budget_gib']:g} "
            f"GiB of {result['gpu']} (largest: {biggest[0]} {biggest[1]:.1f} GiB); {result['knob']}")
