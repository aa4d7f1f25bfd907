"""Pipelines: a YAML file of stages whose outputs feed later inputs, run as a DAG.

Every stage is validated before the first one starts, so a typo in the last stage does not
surface after an hour of training. Each stage then goes through `submission`, so unchanged
stages are cache hits.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from rich.console import Console

from pai_distil.core import url_credentials
from pai_distil.core.errors import UserError
from pai_distil.core.config import Pipeline, read_mapping, validate
from pai_distil.core.stages import CHECKPOINT_INPUTS, get_stage
from pai_distil.run.submission import check_names, check_scale, execute, prepare, resolve_paths

def load(path: str | Path, backend: str | None = None, say=lambda note: None) -> Pipeline:
    """The validated pipeline, every stage checked for the job `backend` (default: the pipeline's) will run;
    `say` gets the checks' notes (`run.checks`)."""
    from pai_distil.run.checks import check_stage

    data = read_mapping(path, "pipeline")
    pipeline = validate(Pipeline, data, f"pipeline {path}")
    for sid, st in pipeline.stages.items():
        where = f"pipeline {path}: stage '{sid}'"
        stage = get_stage(st.stage)
        config = validate(stage.config, st.config, f"{where} config")
        for note in check_stage(stage.name, config, where, backend or pipeline.backend):
            say(f"stage '{sid}': {note}")
        if sid in st.inputs.values():
            raise UserError(f"{where} takes its own output as input")
        check_names(stage, config, set(st.inputs), where, hint="add `inputs: {{{name}: <stage id or path>}}`")
        for name, src in st.inputs.items():
            upstream = pipeline.stages.get(src)
            if name in CHECKPOINT_INPUTS and upstream is not None and not get_stage(upstream.stage).trains:
                raise UserError(f"{where}: input '{name}' takes stage '{src}' ({upstream.stage}), whose output is no "
                                "checkpoint; name a training stage")
        # Paths are checked now; the outputs of upstream stages do not exist yet.
        resolve_paths({n: src for n, src in st.inputs.items() if src not in pipeline.stages}, where)
        check_scale(stage, config, st.nodes, st.procs_per_node, st.resources, where)
    order(pipeline)
    return pipeline


def order(pipeline: Pipeline) -> list[str]:
    graph = {sid: {src for src in st.inputs.values() if src in pipeline.stages} for sid, st in pipeline.stages.items()}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise UserError(f"pipeline {pipeline.name}: stages depend on each other in a cycle: {' -> '.join(e.args[1])}") from None


def run(path: str | Path, *, backend: str | None = None, force: bool = False, dry_run: bool = False,
        console: Console | None = None, download: bool = False, max_restarts: int | None = None) -> dict[str, object]:
    """Run every stage in dependency order; returns stage id -> run record (a plan on dry run).

    On `pai` each stage reads its upstream stages' outputs where they are in OSS; only the final
    stages' outputs (those no other stage reads) come home, or every stage's with `download`.
    """
    console = console or Console(stderr=True)
    pipeline = load(path, backend)
    backend = backend or pipeline.backend
    if dry_run:
        return {sid: plan(pipeline, sid) for sid in order(pipeline)}
    read = {src for st in pipeline.stages.values() for src in st.inputs.values()}
    outputs: dict[str, str] = {}
    records: dict[str, object] = {}
    for sid in order(pipeline):
        st = pipeline.stages[sid]
        console.rule(f"[bold]{sid}[/] ({st.stage})")
        inputs = {n: outputs.get(src, src) for n, src in st.inputs.items()}
        prep = prepare(st.stage, st.config, inputs, where=f"pipeline stage '{sid}'", nodes=st.nodes,
                       procs_per_node=st.procs_per_node, resources=st.resources, backend=backend)
        options = {"download": download or (backend == "pai" and sid not in read), "max_restarts": max_restarts}
        record = execute(prep, backend, force=force, pipeline=pipeline.name, console=console, **options)
        if backend == "pai":
            from pai_distil.backends.pai import output_uri

            outputs[sid] = output_uri(record)
        else:
            outputs[sid] = record.output
        records[sid] = record
    return records


def plan(pipeline: Pipeline, sid: str) -> dict:
    """What a stage would run with: its validated config and where its inputs come from."""
    st = pipeline.stages[sid]
    config = validate(get_stage(st.stage).config, st.config, f"stage '{sid}'")
    inputs = {n: (f"<output of {src}>" if src in pipeline.stages else src) for n, src in st.inputs.items()}
    return {"stage": st.stage, "config": url_credentials.split(config.model_dump(mode="json"))[0], "inputs": inputs,
            "nodes": st.nodes, "procs_per_node": st.procs_per_node, "resources": st.resources.model_dump()}
