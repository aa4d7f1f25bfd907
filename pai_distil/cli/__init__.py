"""The `pai-distil` command line. Each command group lives in its own module of this package.

Nothing here imports torch or transformers: the client stays fast (see benchmarks/).
"""

from __future__ import annotations

import sys

import click

from pai_distil.core.env_numbers import check_all as check_env_numbers
from pai_distil.core.errors import UserError
from ..paths import set_home


class Main(click.Group):
    """Turns UserError into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pai-distil")
@click.option("--home", type=click.Path(file_okay=False), envvar="PAI_DISTIL_HOME",
              help="state directory (run registry, work dirs); default ~/.pai-distil")
def cli(home: str | None) -> None:
    """Distil small, efficient reasoning models from large teachers.

    Every step is a stage run as a job: on this machine (--backend process), in Docker
    (--backend local) or on Alibaba Cloud PAI (--backend pai).
    """
    check_env_numbers()  # a bad PAI_DISTIL_*_S / *_MB stops here, before a server or a supervisor reads it
    if home:
        set_home(home)


def _register() -> None:
    from . import config, deploy, dsw, emulator, images, plan, reward, runs, serving, submit, teacher

    for module in (submit, plan, runs, teacher, reward, images, config, dsw, emulator, deploy, serving):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="pai-distil")
