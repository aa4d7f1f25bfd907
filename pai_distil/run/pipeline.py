"""Pipelines: a YAML file of stages whose outputs feed later inputs, run as a DAG.

Every stage is validated before the first one starts, so a typo in the last stage does not
surface after an hour of training. Each stage then goes through `submission`, so unchanged
stages are cache hits.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from rich.console import Console

from pai_distil.core import model_refs, url_credentials
from pai_distil.core.errors import UserError
from pai_distil.core.config import Pipeline, PipelineStage, read_mapping, validate
from pai_distil.core.config.overrides import apply
from pai_distil.core.stages import CHECKPOINT_INPUTS, get_stage
from pai_distil.core.suggest import did_you_mean, nearest
from pai_distil.run.submission import check_names, check_scale, execute, prepare, resolve_paths

def load(path: str | Path, backend: str | None = None, say=lambda note: None, overrides=()) -> Pipeline:
    """The validated pipeline, with `overrides` (STAGE_ID.KEY=VALUE) applied, every stage checked for the job
    `backend` (default: the pipeline's) will run; `say` gets the checks' notes (`run.checks`)."""
    from pai_distil.run.checks import check_stage

    data = scoped_overrides(read_mapping(path, "pipeline"), overrides, path)
    pipeline = validate(Pipeline, data, f"pipeline {path}{' with overrides' if overrides else ''}")
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
        paths = {n: src for n, src in st.inputs.items() if src not in pipeline.stages}
        for name, src in paths.items():
            check_stage_reference(pipeline, name, src, where)
        resolve_paths(paths, where)
        check_scale(stage, config, st.nodes, st.procs_per_node, st.resources, where)
    order(pipeline)
    return pipeline


def scoped_overrides(data: dict, overrides, path) -> dict:
    """`student.train.max_steps=200`: a field of stage `student`'s config, or of the stage itself where the
    key is one (`student.nodes=2`, `student.inputs.cots=...`); an unknown stage id is named with the nearest."""
    if not overrides:
        return data
    stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    scoped = []
    for pair in overrides:
        key, sep, value = pair.partition("=")
        sid, dot, rest = key.partition(".")
        if not sep or not dot or not rest:
            raise UserError(f"override {pair!r} must look like STAGE_ID.KEY=VALUE, e.g. "
                            f"{next(iter(stages), 'student')}.train.max_steps=200")
        if sid not in stages:
            raise UserError(f"override {pair!r}: pipeline {path} has no stage '{sid}'{did_you_mean(sid, stages)} "
                            f"(its stages: {', '.join(map(str, stages))})")
        inner = rest if rest.split(".")[0] in PipelineStage.model_fields else f"config.{rest}"
        scoped.append(f"stages.{sid}.{inner}={value}")
    return apply(data, scoped)


def check_stage_reference(pipeline: Pipeline, name: str, src: str, where: str) -> None:
    """An input that is no path, no run id and no stage id of this pipeline: a stage id misspelt or
    missing (`cots: generat`), named as such rather than as a path that does not exist."""
    if src.startswith("oss://") or Path(src).expanduser().exists() or model_refs.RUN_ID.match(src):
        return
    close = nearest(src, pipeline.stages)
    if close or not any(c in src for c in "/.~"):
        raise UserError(f"{where}: input '{name}' names stage '{src}', which this pipeline does not have"
                        f"{f'; did you mean {close!r}?' if close else ''} (its stages: {', '.join(pipeline.stages)})")


def order(pipeline: Pipeline) -> list[str]:
    graph = {sid: {src for src in st.inputs.values() if src in pipeline.stages} for sid, st in pipeline.stages.items()}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise UserError(f"pipeline {pipeline.name}: stages depend on each other in a cycle: {' -> '.join(e.args[1])}") from None


def run(path: str | Path, *, backend: str | None = None, force: bool = False, dry_run: bool = False,
        console: Console | None = None, download: bool = False, max_restarts: int | None = None,
        overrides=()) -> dict[str, object]:
    """Run every stage in dependency order; returns stage id -> run record (a plan on dry run).

    On `pai` each stage reads its upstream stages' outputs where they are in OSS; only the final
    stages' outputs (those no other stage reads) come home, or every stage's with `download`.
    """
    console = console or Console(stderr=True)
    pipeline = load(path, backend, overrides=overrides)
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
