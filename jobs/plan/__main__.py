"""`python -m pai_distil_jobs.plan`: the plan's child process. The client (torch-free) writes the request
as JSON on stdin; this answers one JSON object on stdout: the plan, or {"error": one line}."""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    request = json.load(sys.stdin)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pai_distil.core.contract import JobError
    from pai_distil.core.stages import get_stage
    from pai_distil_jobs.plan.estimate import compose, trace_step
    from pai_distil_jobs.plan.models import preset_configs

    stage = get_stage(request["stage"])
    cfg = stage.config.model_validate(request["config"])
    models = preset_configs(request["models"])
    preset = request["preset"]
    world = request["processes"]
    try:
        step, trace = trace_step(stage.name, cfg, models, world, preset)
    except JobError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    train = cfg.train.by_kind(preset, world, True)[0]
    result = compose(stage.name, step, trace, train, world, request["gpu"])
    result["models"] = request["labels"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
