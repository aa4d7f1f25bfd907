"""Job entrypoint: `python -m pai_distil_jobs`, the command of every job on every backend.

Training stages with more than one process in all are relaunched under torchrun from the
PAI-DLC variables (one launcher per node; WORLD_SIZE counts nodes, as on DLC); everything else
runs in this process.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from pai_distil.core.artifacts import write_manifest
from pai_distil.core.stages import get_stage

from pai_distil.core.contract import JobContext, JobError, fail, log

def procs_per_node() -> int:
    """NPROC_PER_NODE when the platform or the user set it (DLC sets the node's GPU count), else one
    process per visible GPU, else one."""
    if os.environ.get("NPROC_PER_NODE"):
        return int(os.environ["NPROC_PER_NODE"])
    import torch

    return max(1, torch.cuda.device_count())


def _torchrun_argv(procs: int) -> list[str]:
    env = os.environ
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={env.get('WORLD_SIZE', '1')}",
        f"--node-rank={env.get('RANK', '0')}",
        f"--nproc-per-node={procs}",
        f"--master-addr={env.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master-port={env.get('MASTER_PORT', '29500')}",
        "-m", "pai_distil_jobs",
    ]


def _local_models(config: dict) -> dict:
    """ModelScope ids as their local folders (`models.hub.modelscope_models`), before any loader sees them."""
    if "ms://" not in json.dumps(config):
        return config
    from pai_distil_jobs.models.hub import modelscope_models

    return modelscope_models(config, log=log)


def main() -> int:
    try:
        ctx = JobContext.from_env()
        stage = get_stage(ctx.stage)
        ctx.config = _local_models(ctx.config)
        if os.environ.get("PAI_DISTIL_GPUS", "0") != "0":  # paid GPUs: fail now, not after hours on the CPU
            from pai_distil_jobs.models.gpus import require_usable_gpus

            require_usable_gpus()
        if stage.distributed and "LOCAL_RANK" not in os.environ:
            nodes, procs = int(os.environ.get("WORLD_SIZE", "1")), procs_per_node()
            if nodes * procs > 1:
                # torchrun's children inherit the job contract variables; DLC's RANK/WORLD_SIZE are
                # node-level and torchrun rewrites them per process.
                os.execv(sys.executable, _torchrun_argv(procs))
            # One process in all: run here, without a process group (and keep our exit code). No
            # LOCAL_RANK: accelerate would read it as a distributed launch and wait for a rendezvous.
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        module = importlib.import_module(stage.entry)
        ctx.output.mkdir(parents=True, exist_ok=True)
        finished = module.run(ctx)
    except JobError as e:
        fail(str(e))
        return 2
    except Exception as e:  # noqa: BLE001 - the user sees one line; the traceback goes to the log
        import traceback

        traceback.print_exc()
        fail(f"{type(e).__name__}: {e}")
        return 1
    if finished is False:  # stopped by SIGTERM after saving a checkpoint
        return 143
    if ctx.is_main_process:
        write_manifest(ctx.output, stage=ctx.stage, run_id=ctx.run_id)
        log(f"artifact complete: {ctx.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
