"""`pai-distil deploy`: serve a checkpoint locally, or as a PAI-EAS service (create, update, list, describe, delete).

The server, the EAS SDK and the templates are imported inside the commands, so `--help`
stays fast.
"""

from __future__ import annotations

import secrets

import click

from ..errors import UserError


@click.group()
def deploy() -> None:
    """Serve a distilled model with an OpenAI-compatible API: on this machine, or on PAI-EAS."""


@deploy.command("local")
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="PAI_DISTIL_SERVE_TOKEN", show_envvar=True,
              help="the bearer token clients must send (default: a new random one, printed once)")
@click.option("--no-auth", is_flag=True, help="accept requests without a token")
@click.option("--served-model-name", "--name", "name", help="model name clients ask for (default: from the checkpoint)")
@click.option("--docker", "use_docker", is_flag=True, help="run in the CPU serving image instead of a process")
@click.option("--image", help="with --docker: the serving image (default: serve-cpu of this code)")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 256),
              help="concurrent requests decoded together")
@click.option("--threads", type=click.IntRange(1, 512), help="CPU threads for decoding (default: torch's)")
@click.option("--no-reasoning-parser", is_flag=True, help="return <think>…</think> inline instead of reasoning_content")
def local(checkpoint, host, port, token, no_auth, name, use_docker, image, max_batch, threads, no_reasoning_parser):
    """Serve CHECKPOINT (a folder or a training run id) with the OpenAI API until interrupted."""
    from ..deploy.checkpoint import resolve
    from ..deploy.local import Serve, exec_server, serving_image
    from .teacher import check_port

    ckpt = resolve(checkpoint)
    if ckpt.on_oss:
        raise UserError(f"{ckpt.location} is on OSS; `deploy local` serves a local folder (download it first)")
    if image and not use_docker:
        raise UserError("--image applies with --docker only; add --docker or remove --image")
    check_port(host, port)
    docker_image = serving_image(image) if use_docker else None
    serve = Serve(ckpt.location, name or ckpt.name, host, port, max_batch, threads, not no_reasoning_parser)
    if no_auth:
        token, auth = None, "no token"
    elif token:
        auth = "token from --token / $PAI_DISTIL_SERVE_TOKEN"
    else:
        token = secrets.token_urlsafe(24)
        auth = f"token {token} (set $PAI_DISTIL_SERVE_TOKEN to choose it)"
    where = f"in Docker ({docker_image})" if docker_image else "as a process"
    click.echo(f"serving {ckpt.location} as model '{serve.name}' at {serve.base_url} {where}; {auth}; Ctrl-C stops it",
               err=True)
    exec_server(serve, token, docker_image)


COMMANDS = [deploy]
