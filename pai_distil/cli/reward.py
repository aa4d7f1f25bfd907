"""`pai-distil reward serve CHECKPOINT`: a trained reward model behind an HTTP scoring endpoint.

The command checks what a user can get wrong (the checkpoint, the key, the port), then becomes the
job side's server, `python -m pai_distil_jobs.serve.reward`: the client never imports job code, and
`pai-distil --help` stays free of torch.
"""

from __future__ import annotations

import os
import sys
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
    api_key_of(api_key_env, no_auth)  # set, or a one-line error here
    check_port(host, port)
    argv = [sys.executable, "-m", "pai_distil_jobs.serve.reward", str(checkpoint), "--host", host, "--port", str(port),
            "--max-items", str(max_items), *(["--no-auth"] if no_auth else ["--api-key-env", api_key_env])]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


COMMANDS = [reward]
