"""DLC's ListEcsSpecs (`GET /api/v1/ecsspecs`): the instance types a job may ask for, as DLC describes them.

The table holds real Alibaba Cloud instance types with their published shapes (vCPUs, memory, GPU
count, GPU model and memory). Driver lists and spot stock are the emulator's choice: DLC's answer
varies by region and hour, so the emulator fixes one (gn7e has no spot stock, to try that refusal).
CreateJob reads the same table: a ResourceConfig that contradicts the type is refused, and
NPROC_PER_NODE is the type's GPU count, as on DLC.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from .pop import PopError, request_id

DRIVERS = ["470.82.01", "525.105.17", "535.161.08", "550.127.08"]
DEFAULT_DRIVER = "535.161.08"


def _gpu(instance_type, cpu, memory, gpus, gpu_type, gpu_memory, spot="WithStock") -> dict:
    return {"InstanceType": instance_type, "AcceleratorType": "GPU", "Cpu": cpu, "Memory": memory, "Gpu": gpus,
            "GpuType": gpu_type, "GpuMemory": gpu_memory, "SupportedGPUDrivers": DRIVERS,
            "DefaultGPUDriver": DEFAULT_DRIVER, "SpotStockStatus": spot, "IsAvailable": True,
            "ResourceType": "ECS", "PaymentTypes": ["PostPaid"]}


def _cpu(instance_type, cpu, memory) -> dict:
    return {"InstanceType": instance_type, "AcceleratorType": "CPU", "Cpu": cpu, "Memory": memory, "Gpu": 0,
            "GpuMemory": 0, "SupportedGPUDrivers": [], "SpotStockStatus": "WithStock", "IsAvailable": True,
            "ResourceType": "ECS", "PaymentTypes": ["PostPaid"]}


SPECS = {s["InstanceType"]: s for s in [
    _cpu("ecs.g6.xlarge", 4, 16),
    _cpu("ecs.g7.2xlarge", 8, 32),
    _gpu("ecs.gn7i-c8g1.2xlarge", 8, 30, 1, "NVIDIA A10", 24),
    _gpu("ecs.gn7i-c16g1.4xlarge", 16, 60, 1, "NVIDIA A10", 24),
    _gpu("ecs.gn7i-c32g1.32xlarge", 128, 752, 4, "NVIDIA A10", 24),
    _gpu("ecs.gn6v-c8g1.16xlarge", 64, 256, 8, "NVIDIA V100", 16),
    _gpu("ecs.gn6e-c12g1.24xlarge", 96, 736, 8, "NVIDIA V100", 32),
    _gpu("ecs.gn7e-c16g1.32xlarge", 128, 1024, 8, "NVIDIA A100", 80, spot="NoStock"),
]}


def router(emulator) -> APIRouter:
    from .pop import pop_router

    r = pop_router()

    @r.get("/api/v1/ecsspecs")
    def list_ecs_specs(request: Request) -> dict:
        q = request.query_params
        specs = list(SPECS.values())
        if q.get("InstanceTypes"):
            wanted = set(q["InstanceTypes"].split(","))
            specs = [s for s in specs if s["InstanceType"] in wanted]
        if q.get("AcceleratorType"):
            if q["AcceleratorType"] not in ("CPU", "GPU"):
                raise PopError(400, "InvalidParameter", "AcceleratorType: valid values are CPU and GPU")
            specs = [s for s in specs if s["AcceleratorType"] == q["AcceleratorType"]]
        return {"EcsSpecs": specs, "TotalCount": len(specs), "RequestId": request_id()}

    return r
