"""Pre-flight: the nodes a DLC job asks for, checked before anything is uploaded or bought, and its cost.

Why before submit: DLC accepts `--nproc-per-node 8` on a 4-GPU type and fails only once two nodes are
paid for; an image whose CUDA needs a newer driver than the node's fails the same way. ListEcsSpecs
gives each instance type's GPUs, GPU memory, supported drivers and spot stock, so the job is refused
here, in one line naming the fix. `--no-preflight` skips the checks (a quota's own nodes are not listed).

Price: the installed Alibaba Cloud SDKs (pai-dlc, pai-eas, pai-dsw) have no pricing API, and
ListEcsSpecs gives no price, so the cost line takes `--price-per-hour` (per node) and says so.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from pai_distil.core.errors import UserError

DEFAULT_IMAGE_CUDA = "13.0"  # images/requirements-gpu.txt pins torch's CUDA 13.0 runtime today
# the lowest Linux driver of each CUDA toolkit (NVIDIA's CUDA release notes, table 3)
DRIVER_FLOORS = {"11.8": "520.61.05", "12.1": "530.30.02", "12.2": "535.54.03", "12.4": "550.54.14",
                 "12.6": "560.28.03", "12.8": "570.26", "13.0": "580.65.06"}
SPOT_IN_STOCK = ("WithStock", "ClosedWithStock")
RUNTIME_HEADROOM, RUNTIME_FLOOR_MINUTES = 3, 120  # the run-time limit from the plan: 3 x its hours + 1 h, >= 2 h


@dataclass
class NodeType:
    """One ECS instance type as ListEcsSpecs describes it."""

    instance_type: str
    cpu: int
    memory_gib: int
    gpus: int
    gpu_type: str | None
    gpu_memory_gib: int | None
    drivers: list[str]
    default_driver: str | None
    spot_stock: str | None


@dataclass
class Checked:
    """What pre-flight found: the node type (None on a quota) and the GPU driver to ask DLC for."""

    node: NodeType | None
    driver: str | None


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def driver_floor(cuda: str) -> str:
    if cuda not in DRIVER_FLOORS:
        raise UserError(f"image_cuda {cuda!r} is not a CUDA version pai-distil knows a driver floor for; set one of "
                        f"{', '.join(DRIVER_FLOORS)} with `pai-distil config set image_cuda=12.4`")
    return DRIVER_FLOORS[cuda]


def node_type(client, instance_type: str) -> NodeType | None:
    """ListEcsSpecs for one instance type; None when DLC does not offer it."""
    from alibabacloud_pai_dlc20201203 import models as m

    from .dlc import explain

    try:
        body = client.list_ecs_specs(m.ListEcsSpecsRequest(instance_types=instance_type)).body
    except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
        raise explain(e, "listing ECS specs for the pre-flight (--no-preflight skips it)") from None
    for s in body.ecs_specs or []:
        if s.instance_type == instance_type:
            return NodeType(s.instance_type, s.cpu or 0, s.memory or 0, s.gpu or 0, s.gpu_type, s.gpu_memory,
                            list(s.supported_gpudrivers or []), s.default_gpudriver, s.spot_stock_status)
    return None


def check_nodes(spec, cfg, node: NodeType | None, peak_gib: float | None = None) -> Checked:
    """Every check that needs the node type; raises one-line UserErrors naming the fix.

    `peak_gib` is the per-rank peak memory `pai-distil plan` predicts (None until it is known).
    """
    if node is None:  # a quota: its nodes are not listed; DLC places the job
        return Checked(None, cfg.gpu_driver)
    where = f"ecs_spec {node.instance_type}"
    procs = spec.procs_per_node or 0
    if procs > (node.gpus or 1):
        raise UserError(f"--nproc-per-node {procs} is more than the {node.gpus} GPU(s) of {where}: pass "
                        f"--nproc-per-node {node.gpus or 1} or an instance type with {procs} GPUs (--ecs-spec)")
    if spec.resources.gpu and spec.resources.gpu != node.gpus:
        raise UserError(f"--gpus {spec.resources.gpu} contradicts {where}, which has {node.gpus} GPU(s): drop "
                        f"--gpus (the instance type decides) or choose a type with {spec.resources.gpu} (--ecs-spec)")
    if peak_gib is not None and node.gpu_memory_gib and peak_gib > node.gpu_memory_gib:
        raise UserError(f"`pai-distil plan` predicts {peak_gib:.1f} GiB per rank, more than the "
                        f"{node.gpu_memory_gib} GiB of each GPU of {where}: choose a type with larger GPUs "
                        "(--ecs-spec) or lower the sequence length / batch size")
    if cfg.spot and node.spot_stock not in SPOT_IN_STOCK:
        raise UserError(f"{where} has no spot stock now ({node.spot_stock}): run on demand with "
                        "`pai-distil config set spot=false`, or choose another type (--ecs-spec)")
    return Checked(node, choose_driver(cfg, node) if node.gpus else None)


def choose_driver(cfg, node: NodeType) -> str:
    """The driver DLC installs (Settings.Driver): the configured one, else the lowest the node offers that
    runs the image's CUDA; refused when none does."""
    cuda = cfg.image_cuda or DEFAULT_IMAGE_CUDA
    floor = driver_floor(cuda)
    fits = sorted((d for d in node.drivers if _version(d) >= _version(floor)), key=_version)
    if cfg.gpu_driver:
        if cfg.gpu_driver not in node.drivers or _version(cfg.gpu_driver) < _version(floor):
            raise UserError(f"gpu_driver {cfg.gpu_driver} is not a driver of ecs_spec {node.instance_type} that runs "
                            f"CUDA {cuda} (needs >= {floor}; offered: {', '.join(node.drivers) or 'none'}): "
                            f"`pai-distil config set gpu_driver={fits[0] if fits else node.default_driver}`")
        return cfg.gpu_driver
    if not fits:
        raise UserError(f"ecs_spec {node.instance_type} offers drivers {', '.join(node.drivers) or 'none'}, none of "
                        f"which runs the image's CUDA {cuda} (needs >= {floor}): build the GPU image for an older "
                        "CUDA and `pai-distil config set image_cuda=12.4`, or choose another type (--ecs-spec)")
    return fits[0]


def wall_hours(spec, node: NodeType | None, gpu_hours: float | None) -> float | None:
    """The job's wall-clock hours from the plan's GPU-hours and the GPUs it runs on (None when unknown)."""
    gpus = node.gpus if node else (spec.resources.gpu or spec.procs_per_node or 0)
    return gpu_hours / (spec.nodes * gpus) if gpu_hours is not None and gpus else None


def runtime_limit(hours: float) -> int:
    """JobMaxRunningTimeMinutes from the plan's wall-clock hours: three times them plus an hour for loading,
    tokenising and checkpoints, at least two hours. A hung job (an NCCL deadlock) stops billing there; a
    job that was only slow resumes from its checkpoint when submitted again."""
    return max(RUNTIME_FLOOR_MINUTES, math.ceil(hours * 60 * RUNTIME_HEADROOM) + 60)


def cost_line(spec, node: NodeType | None, gpu_hours: float | None, price_per_hour: float | None) -> str:
    """`cost: 2 nodes × 8 GPUs ...` for the console, before submit.

    `gpu_hours` is the plan's prediction for the whole job (None until `pai-distil plan` gives it);
    `price_per_hour` the price of one node per hour, from `--price-per-hour`.
    """
    gpus = node.gpus if node else (spec.resources.gpu or spec.procs_per_node or 0)
    shape = f"{spec.nodes} node(s) × {gpus} GPU(s)" + (f" ({node.instance_type}, {node.gpu_type})" if node and node.gpu_type else "")
    hours = wall_hours(spec, node, gpu_hours)
    parts = [f"cost: {shape}"]
    parts.append(f"{gpu_hours:.1f} GPU-hours, {hours:.2f} h (from the plan)" if hours is not None
                 else "GPU-hours unknown (no plan for this stage yet)")
    if price_per_hour is None:
        parts.append("price unknown: pass --price-per-hour (the SDKs have no pricing API)")
    elif hours is not None:
        parts.append(f"{spec.nodes} × {hours:.2f} h × {price_per_hour:g}/h = {spec.nodes * hours * price_per_hour:.2f} "
                     "(price from --price-per-hour)")
    else:
        parts.append(f"{spec.nodes * price_per_hour:.2f} per hour (price from --price-per-hour)")
    return "; ".join(parts)
