"""`pai-distil reward serve CHECKPOINT`: a trained reward model behind an HTTP scoring endpoint.

The server (torch, transformers, FastAPI) is imported only when it starts, so `pai-distil
--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from pai_distil.core.artifacts import REWARD_HEAD
from pai_distil.core.errors import UserError
from .teacher import check_port, api_key_of, server_options


@click.group()
def reward() -> None:
    """Serve a reward model trained by the reward-model stage."""


@reward.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@server_options(8500, "PAI_DISTIL_REWARD_API_KEY")
@click.option("--max-items", default=256, show_default=True, type=click.IntRange(1, 100_000),
              help="most (prompt, completion) items one request may hold")
def serve(checkpoint: Path, host: str, port: int, api_key_env: str, no_auth: bool, max_items: int) -> None:
    """Score (prompt, completion) pairs: POST /v1/score {"items": [{"prompt", "completion"}]}."""
    if not (checkpoint / REWARD_HEAD).is_file():
        raise UserError(f"{str(checkpoint)!r} is not a reward model checkpoint (no {REWARD_HEAD}); pass the output "
                        "directory of a reward-model run (`pai-distil runs show RUN` prints it)")
    api_key = api_key_of(api_key_env, no_auth)
    check_port(host, port)
    try:
        from pai_distil_jobs.serve.reward import serve as run_server
    except ImportError as e:
        raise UserError(f"serving a reward model needs the training extras ({e.name} is missing); "
                        "install them with `pip install 'pai-distil[train]'`") from None

    url_host = f"[{host}]" if ":" in host else host
    auth = "no API key" if no_auth else f"API key from ${api_key_env}"

    def ready() -> None:
        click.echo(f"reward model {checkpoint} serving at http://{url_host}:{port}/v1/score ({auth}); Ctrl-C stops it")

    run_server(checkpoint, host, port, api_key, max_items=max_items, on_ready=ready)


COMMANDS = [reward]
