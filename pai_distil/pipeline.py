"""Pipelines: a YAML file of stages whose outputs feed later inputs, run as a DAG.

Every stage is validated before the first one starts, so a typo in the last stage does not
surface after an hour of training. Each stage then goes through `submission`, so unchanged
stages are cache hits.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from rich.console import Console

from .errors import UserError
from .specs import Pipeline, read_mapping, validate
from .stages import get_stage
from .submission import check_inputs, execute, needed_inputs, prepare

PLACEHOLDER_OUTPUT = "/nonexistent/upstream-output"


def load(path: str | Path) -> Pipeline:
    data = read_mapping(path, "pipeline")
    pipeline = validate(Pipeline, data, f"pipeline {path}")
    for sid, st in pipeline.stages.items():
        stage = get_stage(st.stage)
        config = validate(stage.config, st.config, f"pipeline {path}: stage '{sid}' config")
        upstream = {n: src for n, src in st.inputs.items() if src in pipeline.stages}
        if sid in upstream.values():
            raise UserError(f"pipeline {path}: stage '{sid}' takes its own output as input")
        # Check the file inputs now; upstream outputs do not exist yet.
        files = {n: (src if n not in upstream else None) for n, src in st.inputs.items()}
        required, allowed = needed_inputs(stage, config)
        for name in sorted(required - set(files)):
            raise UserError(f"pipeline {path}: stage '{sid}' ({stage.name}) needs input '{name}'; "
                            f"add `inputs: {{{name}: <stage id or path>}}`")
        check_inputs(stage, config, {n: p for n, p in files.items() if p is not None}, f"pipeline {path}: stage '{sid}'")
        for name in sorted(set(files) - allowed):
            raise UserError(f"pipeline {path}: stage '{sid}' takes no input '{name}'")
    order(pipeline)
    return pipeline


def order(pipeline: Pipeline) -> list[str]:
    graph = {sid: {src for src in st.inputs.values() if src in pipeline.stages} for sid, st in pipeline.stages.items()}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise UserError(f"pipeline {pipeline.name}: stages depend on each other in a cycle: {' -> '.join(e.args[1])}") from None


def run(path: str | Path, *, backend: str | None = None, force: bool = False, dry_run: bool = False,
        console: Console | None = None) -> dict[str, object]:
    """Run every stage in dependency order; returns stage id -> run record (or job spec on dry run)."""
    console = console or Console(stderr=True)
    pipeline = load(path)
    backend = backend or pipeline.backend
    outputs: dict[str, str] = {}
    records: dict[str, object] = {}
    for sid in order(pipeline):
        st = pipeline.stages[sid]
        inputs = {n: outputs.get(src, src) for n, src in st.inputs.items()}
        console.rule(f"[bold]{sid}[/] ({st.stage})")
        if dry_run:
            inputs = {n: (p if n not in st.inputs or st.inputs[n] not in pipeline.stages else PLACEHOLDER_OUTPUT)
                      for n, p in inputs.items()}
            prep = prepare_dry(st, inputs, f"pipeline stage '{sid}'")
            records[sid] = prep
            outputs[sid] = f"<output of {sid}>"
            continue
        prep = prepare(st.stage, st.config, inputs, where=f"pipeline stage '{sid}'",
                       nodes=st.nodes, procs_per_node=st.procs_per_node)
        record = execute(prep, backend, force=force, pipeline=pipeline.name, console=console)
        outputs[sid] = record.output
        records[sid] = record
    return records


def prepare_dry(st, inputs: dict[str, str], where: str):
    """The job spec a stage would get, without touching upstream outputs that do not exist yet."""
    stage = get_stage(st.stage)
    config = validate(stage.config, st.config, where)
    return {"stage": st.stage, "config": config.model_dump(mode="json"), "inputs": inputs,
            "nodes": st.nodes, "procs_per_node": st.procs_per_node}
