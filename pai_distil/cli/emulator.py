"""`pai-distil emulator start`: a local PAI (OSS, DLC, DSW) on 127.0.0.1 for offline runs and tests."""

from __future__ import annotations

from pathlib import Path

import click

from pai_distil.core.errors import UserError


@click.group()
def emulator() -> None:
    """A local PAI that the Alibaba Cloud SDK clients talk to, for trying `--backend pai` offline."""


@emulator.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8790, show_default=True, help="port to listen on")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where objects, jobs and instances are kept (default: <home>/emulator); survives restarts")
@click.option("--access-key-id", envvar="ALIBABA_CLOUD_ACCESS_KEY_ID", metavar="ID",
              help="the AccessKey id to accept [env: ALIBABA_CLOUD_ACCESS_KEY_ID]")
@click.option("--access-key-secret", envvar="ALIBABA_CLOUD_ACCESS_KEY_SECRET", metavar="SECRET",
              help="its secret; prefer the environment variable [env: ALIBABA_CLOUD_ACCESS_KEY_SECRET]")
@click.option("--executor", type=click.Choice(["auto", "docker", "process"]), default="auto", show_default=True,
              help="how DLC pods run: Docker containers of the job's image, or local processes; "
                   "auto = Docker when the engine answers and the image is here")
def start(port, data_dir, access_key_id, access_key_secret, executor) -> None:
    """Serve OSS, DLC and DSW on 127.0.0.1:PORT until interrupted."""
    from .. import paths
    from ..emulator.auth import Keys
    from ..emulator.server import Emulator, serve

    if not access_key_id or not access_key_secret:
        raise UserError("the emulator needs an AccessKey pair: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                        "ALIBABA_CLOUD_ACCESS_KEY_SECRET (or pass --access-key-id/--access-key-secret)")
    directory = Path(data_dir).expanduser().resolve() if data_dir else paths.home() / "emulator"
    emu = Emulator(directory, Keys({access_key_id: access_key_secret}), port=port, executor=executor)
    pods = {"auto": "Docker containers when the job's image is here, else processes",
            "docker": "Docker containers", "process": "local processes"}[executor]
    click.echo(f"pai-distil emulator on http://127.0.0.1:{port} (OSS, DLC, DSW); data in {directory}; "
               f"DLC pods run as {pods}", err=True)
    serve(emu)


@emulator.command()
@click.argument("job_id")
@click.argument("pod_id", required=False)
@click.option("--fail", is_flag=True, help="DLC reports the job Failed (JobPreempted) even on a quota")
def preempt(job_id, pod_id, fail) -> None:
    """Reclaim POD_ID of a running JOB_ID as a spot instance would be (default: its first pod).

    The emulator at `dlc_endpoint` sends the pods SIGTERM and writes their checkpoints to OSS; on a
    quota it restarts the job from there, on general-purpose resources (or with --fail) it ends the
    job Failed, as DLC does, for the client to resubmit.
    A signed call, like every DLC request.
    """
    from pai_distil.cloud.pai import config
    from pai_distil.cloud.pai.dlc import client, explain, preempt_pod

    dlc = client(config.load())
    try:
        answer = preempt_pod(dlc, job_id, pod_id or f"{job_id}-worker-0", fail=fail)
    except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
        raise explain(e, f"preempting a pod of {job_id}") from None
    failed = answer.get("Outcome", "failed" if fail else "restarted") == "failed"
    then = "DLC reports the job failed" if failed else "the job restarts from its checkpoints"
    click.echo(f"preempted {pod_id or f'{job_id}-worker-0'} of {job_id}; {then}")


COMMANDS = [emulator]
