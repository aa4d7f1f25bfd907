"""Commands that start work or check it: submit, run, validate, schema, stages, report."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pai_distil.core.errors import UserError
from pai_distil.core.stages import STAGES

# Config models are imported inside the commands: building the pydantic models costs more than the
# rest of start-up, and `--help` needs none of them (the stage registry names them, it does not
# import them).


class _Backends(click.Choice):
    """core.config.job.BACKENDS, read when first shown or checked: importing the config package
    at start-up would slow every command."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self):
        from pai_distil.core.config.job import BACKENDS

        return BACKENDS

    @choices.setter
    def choices(self, _value) -> None:
        pass


BACKENDS = _Backends()


def _stage_list() -> str:
    """The registry's stages for `--help` (\\b keeps click from re-wrapping the lines)."""
    width = max(map(len, STAGES))
    return "\b\nStages:\n" + "\n".join(f"  {n.ljust(width)}  {s.summary}" for n, s in STAGES.items())


OVERRIDES_HELP = ("\b\nOverrides: KEY.PATH=VALUE after the options sets a config field, its value read as YAML "
                  "(e.g. train.learning_rate=1e-5 student.model=Qwen/Qwen3-1.7B); it wins over the file.")


def _with_overrides(where: str, overrides: tuple[str, ...]) -> str:
    return f"{where} with overrides" if overrides else where


@click.command(epilog=OVERRIDES_HELP + "\n\n" + _stage_list())
@click.argument("stage")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="stage config (YAML or JSON)")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=PATH", help="an input of the stage (repeatable)")
@click.option("--backend", "-b", type=BACKENDS, default="process", show_default=True,
              help="where the job runs: process (a subprocess here), local (Docker here) or pai (PAI-DLC)")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="nodes the job runs on")
@click.option("--nproc-per-node", type=click.IntRange(min=1),
              help="processes per node [default: 1; on pai, the node's GPU count, which DLC sets]")
@click.option("--gpus", type=click.IntRange(min=0, max=16), help="GPUs per node (pai: ResourceConfig.GPU)")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), help="vCPUs per node (pai: ResourceConfig.CPU)")
@click.option("--memory", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="memory per node in GiB (pai: ResourceConfig.Memory)")
@click.option("--shared-memory", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="/dev/shm per node in GiB (pai: ResourceConfig.SharedMemory; default 8 with GPUs)")
@click.option("--ecs-spec", help="pai: ECS instance type per node, instead of the configured ecs_spec")
@click.option("--max-restarts", type=click.IntRange(min=0, max=100),
              help="pai: resubmit a job DLC failed through preemption or node loss up to N times "
                   "[default: max_restarts in the config, else 3 on spot, 0 otherwise]")
@click.option("--download", is_flag=True, help="pai: bring the output home from OSS (else it stays there; "
                                               "`pai-distil runs pull RUN` fetches it later)")
@click.option("--no-preflight", is_flag=True, help="pai: skip the node checks (GPUs per node, driver, spot stock) "
                                                   "made with ListEcsSpecs before anything is uploaded")
@click.option("--no-plan", is_flag=True, help="pai: skip `pai-distil plan` of a training stage on the node's GPUs "
                                              "(memory fit, GPU-hours) before anything is uploaded")
@click.option("--price-per-hour", type=click.FloatRange(min=0), metavar="PRICE",
              help="pai: price of one node per hour, for the cost line (the SDKs have no pricing API)")
@click.option("--max-runtime", type=click.IntRange(min=1), metavar="MINUTES",
              help="pai: DLC ends the job after this long (JobMaxRunningTimeMinutes) [default: max_running_minutes "
                   "in the config, else 3 days]")
@click.option("--force", is_flag=True, help="rerun even when config and inputs are unchanged")
@click.option("--detach", "-d", is_flag=True, help="return once the job has started")
@click.option("--dry-run", is_flag=True, help="print the job spec (with --backend pai: the DLC CreateJob body) and start nothing")
@click.option("--variant", type=click.Choice(["x", "y"]), help="adaptive-thinking: ThoughtX (x) or ThoughtY (y)")
def submit(stage, overrides, config_file, inputs, backend, nodes, nproc_per_node, gpus, cpu, memory, shared_memory, ecs_spec,
           max_restarts, download, no_preflight, no_plan, price_per_hour, max_runtime, force, detach, dry_run,
           variant):
    """Run one STAGE as a job (e.g. `pai-distil submit slow-thinking -c cfg.yaml -i cots=out/ train.max_steps=200`)."""
    from pai_distil.core.config import Resources, read_mapping
    from pai_distil.core.config.overrides import apply
    from pai_distil.core.stages import get_stage
    from pai_distil.run.submission import execute, parse_inputs, prepare

    get_stage(stage)
    data = apply(read_mapping(config_file) if config_file else {}, overrides)
    if variant is not None:
        if stage != "adaptive-thinking":
            raise UserError(f"--variant applies to adaptive-thinking only, not {stage}; remove it")
        data["variant"] = variant
    where = _with_overrides(f"config {config_file}" if config_file else f"{stage} config", overrides)
    resources = Resources(gpu=gpus or 0, cpu=cpu, memory_gb=memory, shared_memory_gb=shared_memory,
                          instance_type=ecs_spec)
    prep = prepare(stage, data, parse_inputs(inputs), where=where, nodes=nodes, procs_per_node=nproc_per_node,
                   resources=resources, backend=backend)
    if dry_run:
        _dry_run_alone(backend, force=force, detach=detach, download=download, max_restarts=max_restarts)
        if backend == "pai":  # what DLC would receive: the CreateJob body, field names as the API has them
            from ..backends.pai import dry_run_body

            click.echo(json.dumps(dry_run_body(prep.spec, no_preflight, price_per_hour, max_runtime, no_plan), indent=2))
            return
        click.echo(json.dumps(prep.spec.model_dump(mode="json"), indent=2))
        return
    record = execute(prep, backend, force=force, detach=detach, download=download, max_restarts=max_restarts,
                     no_preflight=no_preflight, price_per_hour=price_per_hour, max_runtime=max_runtime,
                     no_plan=no_plan)
    if detach:  # the id on stdout, for `RUN=$(pai-distil submit -d ...)`; where the output goes on stderr
        click.echo(record.id)
        click.echo(f"output: {record.output}", err=True)
        return
    click.echo(record.output)


def _dry_run_alone(backend: str, force: bool, detach: bool, **options) -> None:
    """--dry-run starts nothing, so flags about the run it does not start are a mistake to name, not to drop."""
    from pai_distil.backends import check_options

    if force or detach:
        raise UserError(f"{'--force' if force else '--detach'} is about a run that --dry-run does not start; "
                        "give one or the other")
    check_options(backend, **options)


@click.command("run", epilog="\b\nOverrides: STAGE_ID.KEY.PATH=VALUE after the options sets a field of that stage's "
                              "config (e.g. student.train.max_steps=200), or of the stage itself (student.nodes=2).")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[STAGE_ID.KEY=VALUE]...")
@click.option("--backend", "-b", type=BACKENDS, default=None, help="override the pipeline's backend")
@click.option("--force", is_flag=True, help="rerun every stage, cached or not")
@click.option("--dry-run", is_flag=True, help="validate and print each stage's job; start nothing")
@click.option("--download", is_flag=True, help="pai: bring every stage's output home (by default only the final "
                                               "stages' come home; the others stay in OSS)")
@click.option("--max-restarts", type=click.IntRange(min=0, max=100),
              help="pai: resubmit a job DLC failed through preemption or node loss up to N times")
def run_pipeline(pipeline_file, overrides, backend, force, dry_run, download, max_restarts):
    """Run a PIPELINE_FILE of stages in dependency order; unchanged stages are cache hits."""
    from pai_distil.run import pipeline
    from pai_distil.core import report
    from pai_distil.run import report_tables

    console = Console(stderr=True)
    records = pipeline.run(pipeline_file, backend=backend, force=force, dry_run=dry_run, console=console,
                           download=download, max_restarts=max_restarts, overrides=overrides)
    if dry_run:
        click.echo(json.dumps(records, indent=2))
        return
    table = Table(title="pipeline", title_justify="left")
    for col in ("stage id", "stage", "run", "state"):
        table.add_column(col, no_wrap=True)
    table.add_column("output", overflow="fold")
    for sid, r in records.items():
        table.add_row(sid, r.stage, r.id, r.state, r.output)
    console.print(table)
    for sid, r in records.items():
        if r.stage == "evaluate":
            report_tables.render(report.load(r.output), title=f"{sid}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--stage", "-s", help="the stage whose config FILE is (not needed for pipelines)")
@click.option("--backend", "-b", type=BACKENDS, default=None,
              help="check for the job this backend runs [default: the pipeline's; process for a stage config]")
@click.option("--json", "as_json", is_flag=True, help='print the verdict as JSON: {"ok", "notes", ...}, or '
                                                      '{"ok": false, "error"} (the exit status is still non-zero)')
def validate(file, overrides, stage, backend, as_json):
    """Check a pipeline or stage config FILE without running anything: the config, and what the job would
    meet (the packages of the job's Python, the chat templates of local checkpoints, the variables its
    api_key_env fields name). Overrides are checked with it, as `submit` and `run` take them."""
    try:
        verdict = _validate(file, stage, backend, overrides)
    except UserError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": file, "error": e.message}))
        raise
    if as_json:
        click.echo(json.dumps(verdict, indent=1))
        return
    for note in verdict["notes"]:
        click.echo(f"note: {note}")
    if verdict["kind"] == "pipeline":
        click.echo(f"ok: pipeline {verdict['name']!r}, stages in order: {', '.join(verdict['stages'])}")
    else:
        click.echo(f"ok: {stage} config {file}")


def _validate(file: str, stage: str | None, backend: str | None, overrides: tuple[str, ...] = ()) -> dict:
    """What `validate` found: the file's kind, its name or stage, the stages in order, and the checks' notes."""
    from pai_distil.run import pipeline
    from pai_distil.run.checks import check_api_keys, check_stage
    from pai_distil.core.config import read_mapping, validate as validate_model
    from pai_distil.core.config.overrides import apply
    from pai_distil.core.stages import get_stage

    data = read_mapping(file)
    notes: list[str] = []
    if "stages" in data and stage is None:
        p = pipeline.load(file, backend, say=notes.append, overrides=overrides)
        for sid, st in p.stages.items():
            where = f"pipeline {file}: stage '{sid}'"
            config = validate_model(get_stage(st.stage).config, st.config, f"{where} config")
            notes += [f"stage '{sid}': {n}" for n in check_api_keys(config, where, backend or p.backend)]
        return {"ok": True, "file": file, "kind": "pipeline", "name": p.name, "stages": pipeline.order(p),
                "notes": notes}
    if stage is None:
        raise UserError(f"{file} is not a pipeline (no `stages:`); pass --stage NAME to check a stage config")
    where = _with_overrides(f"config {file}", overrides)
    config = validate_model(get_stage(stage).config, apply(data, overrides), where)
    notes += check_stage(get_stage(stage).name, config, where, backend or "process")
    notes += check_api_keys(config, where, backend or "process")
    return {"ok": True, "file": file, "kind": "stage", "stage": stage, "notes": notes}


@click.command()
@click.argument("what", default="pipeline")
def schema(what):
    """Print the JSON Schema of WHAT: `pipeline` (default), `job`, or a stage name."""
    from pai_distil.core.config import JobSpec, Pipeline
    from pai_distil.core.stages import get_stage

    if what == "pipeline":
        model = Pipeline
    elif what == "job":
        model = JobSpec
    else:
        model = get_stage(what).config
    click.echo(json.dumps(model.model_json_schema(), indent=2))


@click.command("stages")
@click.option("--json", "as_json", is_flag=True, help="print the stages as a JSON list")
def list_stages(as_json):
    """List the stages of the recipe, their inputs and what each does."""
    if as_json:
        click.echo(json.dumps([{"name": s.name, "summary": s.summary, "inputs": list(s.inputs),
                                "optional_inputs": list(s.optional_inputs), "distributed": s.distributed,
                                "trains": s.trains} for s in STAGES.values()], indent=1))
        return
    table = Table(title="stages", title_justify="left")
    for col in ("stage", "inputs", "what it does"):
        table.add_column(col)
    for s in STAGES.values():
        ins = ", ".join(list(s.inputs) + [f"{n} (optional)" for n in s.optional_inputs])
        table.add_row(s.name, ins, s.summary)
    Console().print(table)


@click.command("report")
@click.argument("target")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False),
              help="where to write the chart (default: report.png next to report.json)")
@click.option("--no-chart", is_flag=True, help="show the tables only")
def show_report(target, chart_path, no_chart):
    """Show the evaluation report of a RUN id or an evaluate output directory, and redraw its chart."""
    from pai_distil.core import report
    from pai_distil.run import report_tables

    path = Path(target)
    if not path.exists():
        from pai_distil.run.registry import Registry

        path = Path(Registry().get(target).output)
    if not (path / report.REPORT).is_file():
        raise UserError(f"{target} has no {report.REPORT}; give an evaluate run id or its output directory")
    try:
        data = report.load(path)
        report_tables.render(data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path / report.REPORT} is not an evaluation report ({type(e).__name__}: {e}); "
                        "rerun the evaluate stage") from None
    if no_chart:
        return
    png = report.chart_png(data)
    dest = Path(chart_path) if chart_path else _chart_destination(path, png, target)
    if dest.is_file() and dest.read_bytes() == png:
        click.echo(f"chart: {dest}")
        return
    dest.write_bytes(png)
    click.echo(f"chart: {dest}")


def _chart_destination(path: Path, png: bytes, target: str) -> Path:
    """report.png next to report.json, unless that would change a file an artifact's manifest lists."""
    from pai_distil.core import artifacts, report

    dest = path / report.CHART
    manifest = artifacts.read_manifest(path) or {}
    listed = {f["path"] for f in manifest.get("files", [])}
    if report.CHART in listed and dest.is_file() and dest.read_bytes() != png:
        return Path.cwd() / f"{Path(target).name or 'evaluation'}-{report.CHART}"
    return dest


COMMANDS = [submit, run_pipeline, validate, schema, list_stages, show_report]
