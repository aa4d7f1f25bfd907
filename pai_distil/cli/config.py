"""`pai-distil config`: where `--backend pai` sends jobs and data (no credentials are stored)."""

from __future__ import annotations

import click

from pai_distil.core.errors import UserError


@click.group("config")
def config() -> None:
    """Show or change the PAI settings in <home>/config.toml (region, workspace, OSS, quota, image, VPC)."""


@config.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
def set_(pairs) -> None:
    """Set keys, e.g. `pai-distil config set region=cn-hangzhou oss_bucket=my-bucket`."""
    from pai_distil.cloud.pai import config as pai_config

    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{pair!r} must look like KEY=VALUE, e.g. oss_bucket=my-bucket")
        changes[key.strip()] = value.strip()
    pai_config.save(changes)
    click.echo(f"saved {', '.join(changes)} to {pai_config.config_path()}")


@config.command()
@click.argument("keys", nargs=-1, required=True)
def unset(keys) -> None:
    """Remove KEYS (they go back to their defaults)."""
    from pai_distil.cloud.pai import config as pai_config

    pai_config.save({}, unset=keys)
    click.echo(f"removed {', '.join(keys)} from {pai_config.config_path()}")


@config.command()
def show() -> None:
    """Print the settings in effect, and where credentials come from."""
    from rich.table import Table

    from pai_distil.cloud.pai import config as pai_config
    from .runs import _console

    cfg = pai_config.load()
    table = Table(title=str(pai_config.config_path()), title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("meaning", style="dim")
    explicit = set(cfg.model_fields_set)
    for name, field in pai_config.PaiConfig.model_fields.items():
        value = getattr(cfg, name)
        shown = "" if value is None else str(value)
        table.add_row(name, shown if name in explicit else f"[dim]{shown or '-'}[/]", field.description or "")
    console = _console()
    console.print(table)
    console.print("credentials: the Alibaba Cloud credential chain (ALIBABA_CLOUD_ACCESS_KEY_ID/"
                  "ALIBABA_CLOUD_ACCESS_KEY_SECRET, ~/.alibabacloud/credentials.ini, RAM role); never stored here")


COMMANDS = [config]
