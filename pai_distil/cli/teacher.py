"""`pai-distil teacher`: serve the synthetic teacher on an OpenAI-compatible endpoint.

Real teachers (vLLM on PAI-EAS, DashScope, ...) are not served here: point `teacher.base_url`
of the generate config at them. The server module (FastAPI, uvicorn) is imported only when a
server starts, so `pai-distil --help` stays fast.
"""

from __future__ import annotations

import os
import socket

import click
from click.core import ParameterSource

from pai_distil.core.errors import UserError


def server_options(port: int, key_env: str):
    """The options every serve command shares: address, port and the API key's environment variable."""
    def wrap(f):
        for option in reversed([
            click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on"),
            click.option("--port", default=port, show_default=True, type=click.IntRange(1, 65535), help="port to listen on"),
            click.option("--api-key-env", default=key_env, show_default=True,
                         help="environment variable holding the API key clients must send"),
            click.option("--no-auth", is_flag=True, help="accept requests without an API key"),
        ]):
            f = option(f)
        return f
    return wrap


def api_key_of(api_key_env: str, no_auth: bool) -> str | None:
    """The key clients must send (None with --no-auth); a one-line error when it is not set, or when
    --api-key-env and --no-auth are both given (which one was meant?)."""
    if no_auth:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.get_parameter_source("api_key_env") is ParameterSource.COMMANDLINE:
            raise UserError("--api-key-env and --no-auth contradict each other; pass --api-key-env to require "
                            "that key, or --no-auth to serve without one")
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise UserError(f"environment variable {api_key_env} is not set; set it to the API key clients "
                        "must send, or pass --no-auth to serve without one")
    return key


@click.group()
def teacher() -> None:
    """Serve a teacher model for the generate and score stages."""


@teacher.command()
@click.option("--synthetic", is_flag=True, hidden=True, help="the synthetic teacher (the only one served; accepted, "
              "no longer needed)")
@server_options(8400, "PAI_DISTIL_TEACHER_API_KEY")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="how often model oracle-noisy slips on a step (0: its default of 0.1)")
@click.option("--fail-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="fraction of requests answered with HTTP 500/429, to exercise client retries")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the noisy teacher's slips")
@click.option("--logits-model", default=None, metavar="DIR",
              help="a checkpoint (or preset:<name>) that answers /v1/completions with prompt logprobs, as vLLM "
                   "does (echo + logprobs), for the teacher-logits stage and on-policy distillation")
@click.option("--logits-name", default="teacher", show_default=True, help="model name of the --logits-model")
def serve(synthetic: bool, host: str, port: int, api_key_env: str, no_auth: bool,
          error_rate: float, fail_rate: float, seed: int, logits_model: str | None, logits_name: str) -> None:
    """Serve the synthetic teacher (models oracle, oracle-noisy) until interrupted. For a real teacher,
    point `teacher.base_url` of the generate config at its OpenAI-compatible server (vLLM, DashScope)."""
    api_key = api_key_of(api_key_env, no_auth)
    if logits_model is not None:
        from pai_distil.core.model_refs import check as check_model

        try:
            logits_model = check_model(logits_model)
        except ValueError as e:
            raise UserError(f"--logits-model {logits_model!r}: {e}") from None
    check_port(host, port)
    from ..synthetic.server import MODELS, serve as run_server

    url_host = f"[{host}]" if ":" in host else host
    auth = "no API key" if no_auth else f"API key from ${api_key_env}"
    logits = f"; /v1/completions with prompt logprobs: {logits_name} = {logits_model}" if logits_model else ""
    click.echo(f"synthetic teacher serving at http://{url_host}:{port}/v1 "
               f"(models: {', '.join(MODELS)}; {auth}{logits}); Ctrl-C stops it")
    run_server(host=host, port=port, api_key=api_key, error_rate=error_rate, seed=seed, fail_rate=fail_rate,
               logits_model=logits_model, logits_name=logits_name)


def check_port(host: str, port: int) -> None:
    """A busy port as a one-line error rather than uvicorn's log and exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port "
                            "or stop the process using it") from None


COMMANDS = [teacher]
