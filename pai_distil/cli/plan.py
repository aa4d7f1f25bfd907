"""`pai-distil plan`: per-GPU memory, FLOPs, step time and GPU-hours of a training stage at real shapes,
before a GPU is bought (see pai_distil.run.plan)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pai_distil.core.errors import UserError

KINDS = ("parameters", "gradients", "optimizer", "activations", "temporaries", "frozen models", "vllm", "runtime")


@click.command()
@click.argument("target", metavar="STAGE|PIPELINE.yaml")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="stage config (YAML or JSON)")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=PATH",
              help="an input of the stage; checkpoints are sized by their config.json (repeatable)")
@click.option("--nodes", type=click.IntRange(min=1), help="nodes [default: 1, or the pipeline stage's]")
@click.option("--gpus", type=click.IntRange(min=1, max=16), help="GPUs per node, one process each [default: 8, or "
                                                                 "the pipeline stage's]")
@click.option("--gpu-type", default="h800", show_default=True, help="H800, H100, H200, H20, A800, A100, L20, L40S, A10")
@click.option("--gpu-memory", type=click.FloatRange(min=1), metavar="GIB", help="memory per GPU [default: the type's]")
@click.option("--mfu", type=float, default=0.4, show_default=True, help="model FLOPs utilisation the time assumes")
@click.option("--shape", help="a shipped model shape for the trained model, e.g. qwen3-8b")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def plan(target, config_file, inputs, nodes, gpus, gpu_type, gpu_memory, mfu, shape, as_json) -> None:
    """Trace one training step of STAGE (or every training stage of PIPELINE.yaml) at real shapes on fake
    tensors: per-GPU peak memory by kind, FLOPs, step time and GPU-hours. Exits 2 when a step does not fit
    its GPU, naming the setting that makes it fit.

    \b
      pai-distil plan slow-thinking -c kd.yaml --shape qwen3-8b --gpus 8
      pai-distil plan examples/grpo.yaml --gpu-type h20 --json
    """
    from pai_distil.core.config import read_mapping
    from pai_distil.run.plan import gpu_spec, plan_stage, refusal
    from pai_distil.run.submission import parse_inputs

    gpu = gpu_spec(gpu_type, gpu_memory, mfu)
    if Path(target).suffix in (".yaml", ".yml", ".json") and Path(target).exists():
        results = _plan_pipeline(target, nodes, gpus, gpu, shape)
    else:
        config = read_mapping(config_file) if config_file else {}
        results = [plan_stage(target, config, parse_inputs(inputs), nodes=nodes or 1, gpus=gpus or 8, gpu=gpu,
                              shape=shape, where=config_file or target)]
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=1))
    else:
        for result in results:
            _show(result)
    misfits = [r for r in results if not r["fits"]]
    if misfits:
        click.secho("error: " + refusal(misfits[0]), fg="red", err=True)
        sys.exit(2)


def _plan_pipeline(path: str, nodes: int | None, gpus: int | None, gpu: dict, shape: str | None) -> list[dict]:
    """Every training stage of a pipeline; an input from an earlier training stage is that stage's model."""
    from pai_distil.run import pipeline as pipelines
    from pai_distil.run.plan import TRAINING, plan_stage

    pipe = pipelines.load(path)
    trained: dict[str, str] = {}
    results = []
    for sid in pipelines.order(pipe):
        st = pipe.stages[sid]
        if st.stage not in TRAINING:
            continue
        inputs = {name: trained.get(ref, ref) for name, ref in st.inputs.items()}
        world = gpus or st.procs_per_node or st.resources.gpu or 8
        result = plan_stage(st.stage, st.config, inputs, nodes=nodes or st.nodes, gpus=world, gpu=gpu, shape=shape,
                            where=f"{path} stage {sid}")
        result["id"] = sid
        trained[sid] = next(iter(result["models"].values()))
        results.append(result)
    if not results:
        raise UserError(f"{path} has no training stage to plan ({', '.join(TRAINING)})")
    return results


def _gib(x: float) -> str:
    return f"{x:.1f}"


def _show(r: dict) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
    models = ", ".join(f"{role} {label}" for role, label in r["models"].items())
    head = r.get("id", r["stage"])
    console.print(f"[bold]{head}[/bold] ({r['stage']}): {models}; {r['processes']} process(es), {r['sharding']}; "
                  f"micro-batch {r['micro_batch']} x {r['tokens_per_row']} tokens, {r['accumulation']} accumulation "
                  f"step(s), {r['rows_per_step']} rows a step")
    table = Table(title=f"per GPU ({r['gpu']}, {r['budget_gib']:g} GiB)", title_justify="left")
    table.add_column("memory", style="bold")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for kind in KINDS:
        value = r["memory_gib"].get(kind, 0.0)
        if value or kind in ("parameters", "gradients", "optimizer", "activations"):
            how = "arithmetic" if kind in r["analytic"] or kind in ("frozen models", "vllm", "runtime") else "traced"
            table.add_row(kind, _gib(value), how)
    style = "green" if r["fits"] else "red"
    table.add_row(f"[{style}]peak[/{style}]", f"[{style}]{_gib(r['peak_gib'])}[/{style}]",
                  "fits" if r["fits"] else "does not fit")
    console.print(table)
    console.print(f"step: {r['flops_per_step'] / 1e15:.2f} PFLOP per GPU -> {r['step_seconds']:.2f} s at MFU "
                  f"{r['mfu']:g} ({r['tokens_per_second']:,.0f} tokens/s); {r['max_steps']} steps = "
                  f"{r['gpu_hours']:,.1f} GPU-hours")
    for note in r["notes"]:
        console.print(f"note: {note}")


COMMANDS = [plan]
