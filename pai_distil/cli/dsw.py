"""`pai-distil dsw`: a PAI-DSW notebook with a stage's image, OSS mounts and job environment."""

from __future__ import annotations

import click

from pai_distil.core.errors import UserError


@click.group()
def dsw() -> None:
    """Debug instances on PAI-DSW, set up like a run of `--backend pai`."""


@dsw.command()
@click.argument("run")
@click.option("--name", help="instance name (default: debug-<run id>)")
def create(run, name) -> None:
    """Start an instance with the image, OSS mounts and environment of RUN (a `--backend pai` run id)."""
    from alibabacloud_pai_dsw20220101 import models as m  # noqa: F401 - fail early if the SDK is missing

    from ..backends.pai import Plan, load_config
    from ..paths import run_dir
    from pai_distil.cloud.pai import dsw as pai_dsw
    from pai_distil.run.registry import Registry
    from pai_distil.core.config import JobSpec

    record = Registry().get(run)
    if record.backend != "pai":
        raise UserError(f"run {record.id} ran on --backend {record.backend}; DSW mirrors runs of --backend pai")
    spec = JobSpec.model_validate_json((run_dir(record.id) / "spec.json").read_text())
    cfg = load_config()
    plan = Plan(spec, cfg)
    name = name or f"debug-{record.id}"[:64]
    request = pai_dsw.create_instance_request(name, cfg, plan.image(), plan.mounts, plan.env, record.id)
    body = pai_dsw.call("creating the DSW instance", pai_dsw.client(cfg).create_instance, request)
    click.echo(f"DSW instance {body.instance_id} ({name}): {len(plan.mounts)} OSS mount(s) of run {record.id}")


@dsw.command("list")
def list_() -> None:
    """List instances."""
    from alibabacloud_pai_dsw20220101 import models as m
    from rich.table import Table

    from pai_distil.cloud.pai import config
    from pai_distil.cloud.pai import dsw as pai_dsw
    from .runs import _console

    cfg = config.load()
    body = pai_dsw.call("listing DSW instances", pai_dsw.client(cfg).list_instances, m.ListInstancesRequest())
    table = Table(title="DSW instances", title_justify="left")
    for col in ("id", "name", "status", "image", "run", "created"):
        table.add_column(col, overflow="fold")
    for i in body.instances or []:
        run = next((lb.value for lb in (i.labels or []) if lb.key == pai_dsw.RUN_LABEL), "")
        table.add_row(i.instance_id, i.instance_name, i.status, i.image_url or "", run, i.gmt_create_time or "")
    _console().print(table)


def _instance_command(action: str):
    @dsw.command(action, help=f"{action.capitalize()} INSTANCE_ID.")
    @click.argument("instance_id")
    def command(instance_id) -> None:
        from alibabacloud_pai_dsw20220101 import models as m

        from pai_distil.cloud.pai import config
        from pai_distil.cloud.pai import dsw as pai_dsw

        c = pai_dsw.client(config.load())
        if action == "stop":
            pai_dsw.call(f"stopping {instance_id}", c.stop_instance, instance_id, m.StopInstanceRequest())
        else:
            pai_dsw.call(f"deleting {instance_id}", c.delete_instance, instance_id)
        click.echo(f"{action} {instance_id}: done")

    return command


_instance_command("stop")
_instance_command("delete")

COMMANDS = [dsw]
