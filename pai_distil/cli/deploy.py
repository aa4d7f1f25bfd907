"""`pai-distil deploy`: serve a checkpoint locally, or as a PAI-EAS service (create, update, list, describe, delete).

The server, the EAS SDK and the templates are imported inside the commands, so `--help`
stays fast.
"""

from __future__ import annotations

import secrets

import click
from click.core import ParameterSource

from pai_distil.core.errors import UserError


@click.group()
def deploy() -> None:
    """Serve a distilled model with an OpenAI-compatible API: on this machine, or on PAI-EAS."""


@deploy.command("local")
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="port to listen on")
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
    from pai_distil.cloud.deploy.checkpoint import resolve
    from pai_distil.cloud.deploy.local import Serve, exec_server, serving_image
    from .teacher import check_port

    given = click.get_current_context().get_parameter_source("token") is ParameterSource.COMMANDLINE
    if no_auth and token and given:  # $PAI_DISTIL_SERVE_TOKEN with --no-auth is fine: the flag says to ignore it
        raise UserError("--token and --no-auth contradict each other; pass --token to require that token, or "
                        "--no-auth to serve without one")
    ckpt = resolve(checkpoint)
    if ckpt.on_oss:
        raise UserError(f"{ckpt.location} is on OSS; `deploy local` serves a local folder (download it first)")
    if ckpt.reward:
        raise UserError(f"{ckpt.location} is a reward model; serve it with `pai-distil reward serve {checkpoint}`")
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


def _target_options(f):
    f = click.option("--endpoint", envvar="PAI_DISTIL_EAS_ENDPOINT", show_envvar=True,
                     help="EAS API endpoint (default: `pai-distil config`'s eas_endpoint, else pai-eas.REGION.aliyuncs.com; "
                          "the emulator: http://127.0.0.1:8790)")(f)
    return click.option("--region", envvar="ALIBABA_CLOUD_REGION_ID", show_envvar=True,
                        help="region of the EAS services (default: `pai-distil config`'s region)")(f)


def _target(region: str | None, endpoint: str | None):
    """The EAS region and API endpoint: the options, else `pai-distil config`'s region and
    eas_endpoint (read once), else EAS's regional endpoint."""
    from pai_distil.cloud.deploy import eas as eas_api
    from pai_distil.cloud.pai.config import load

    cfg = load() if region is None or endpoint is None else None
    return eas_api.Target(region or cfg.region, endpoint or cfg.eas_endpoint)


def _autoscale(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    lo, sep, hi = value.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi):
        raise UserError(f"--autoscale {value!r}: write MIN:MAX instances, e.g. --autoscale 1:4")
    return int(lo), int(hi)


def _configured_workspace() -> str | None:
    """`pai-distil config`'s workspace, so a service lands where the team's jobs run."""
    from pai_distil.cloud.pai.config import load

    return load().workspace_id


def _instance_size(cpu: float | None, memory_gib: float | None, memory_mb: int | None) -> tuple[int | None, int | None]:
    """(cores, MB) as EAS takes them, from the vocabulary `submit` speaks too: vCPUs as a number, memory in
    GiB (`--memory-gib`) or in MB (`--memory`, EAS's own unit)."""
    if memory_gib is not None and memory_mb is not None:
        raise UserError("--memory-gib and --memory both size the memory; give one (--memory-gib 32 is --memory 32768)")
    if cpu is not None and cpu != int(cpu):
        raise UserError(f"--cpu {cpu:g}: EAS gives whole cores per instance; give a whole number")
    mb = memory_mb if memory_gib is None else max(1, round(memory_gib * 1024))
    return (None if cpu is None else int(cpu)), mb


@deploy.command("eas")
@click.argument("checkpoint")
@click.option("--name", help="EAS service name (default: from the checkpoint or run id)")
@click.option("--engine", type=click.Choice(["vllm", "sglang", "reward"]),
              help="the server: vllm or sglang for a student, reward for a reward model (default: reward for a "
                   "reward-model checkpoint, else vllm; give `reward` for a reward model already on OSS)")
@click.option("--template", type=click.Path(dir_okay=False), help="your copy of templates/eas-<engine>.json")
@click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE",
              help="edit the generated config, the value read as YAML, list items by index (e.g. --set "
                   "containers.0.image=IMAGE; repeatable)")
@click.option("--image", help="serving image (default: the official EAS image of vllm or sglang; for reward, "
                              "`pai-distil config`'s job image)")
@click.option("--served-model-name", help="model name clients ask for (default: the service name)")
@click.option("--instance-type", help="ECS instance type per instance, e.g. ecs.gn7i-c8g1.2xlarge")
@click.option("--resource-group", help="EAS resource group id (instead of --instance-type)")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True),
              help="with --resource-group: vCPUs per instance (whole cores on EAS)")
@click.option("--memory-gib", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="with --resource-group: memory per instance in GiB, as submit's --memory")
@click.option("--memory", "memory_mb", type=click.IntRange(1), metavar="MB",
              help="with --resource-group: memory per instance in MB, as EAS counts it (or --memory-gib)")
@click.option("--gpus", "gpu", type=click.IntRange(0), help="GPUs per instance (sent with --resource-group; "
              "with --instance-type it sets the tensor parallelism of an ECS type, whose name does not say)")
@click.option("--gpu", "gpu_alias", type=click.IntRange(0), hidden=True, help="the earlier name of --gpus")
@click.option("--tensor-parallel", type=click.IntRange(1), help="GPUs one server shards the model over (default: "
              "the GPUs of an instance: --gpus, or an EAS type's name such as ml.gu8xf.c96m1600.8-gu108; else 1)")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              help="precision the server computes in (default: the checkpoint's config.json, else bfloat16)")
@click.option("--shm-size", "shm_gb", type=click.IntRange(1), default=16, show_default=True,
              help="GB of shared memory at /dev/shm (NCCL between tensor-parallel ranks)")
@click.option("--keepalive", "keepalive_s", type=click.IntRange(1), default=600, show_default=True,
              help="seconds one request may take (metadata.rpc.keepalive): long reasoning streams for minutes")
@click.option("--rolling", metavar="SURGE/UNAVAILABLE", help="rolling update: extra instances started and instances "
              "stopped at a time, counts or percentages (e.g. 1/0; default: EAS's)")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="instances of the service (fixed; --autoscale makes it a range)")
@click.option("--autoscale", metavar="MIN:MAX", help="scale between MIN and MAX instances on requests in flight "
              "(reasoning streams last minutes, so QPS stays below 1 and would never scale out)")
@click.option("--autoscale-concurrency", type=click.IntRange(1), default=32, show_default=True,
              help="requests in flight per instance above which the autoscaler adds one")
@click.option("--autoscale-qps", type=click.FloatRange(min=0, min_open=True),
              help="scale on QPS per instance instead of concurrency (short requests only)")
@click.option("--max-model-len", type=click.IntRange(1), default=4096, show_default=True,
              help="tokens of prompt and answer one request may hold (the server's context)")
@click.option("--workspace-id", envvar="PAI_DISTIL_WORKSPACE_ID",
              help="PAI workspace of the service (default: `pai-distil config`'s workspace_id)")
@click.option("--oss-prefix", help="for a local checkpoint: oss://BUCKET/PATH/ to upload it under first, into a new "
              "folder named for its content (PATH/<digest>/)")
@click.option("--oss-endpoint", envvar="PAI_DISTIL_OSS_ENDPOINT", show_envvar=True,
              help="OSS endpoint for the upload (default: `pai-distil config`'s, else https://oss-REGION.aliyuncs.com)")
@click.option("--token", envvar="PAI_DISTIL_EAS_TOKEN", show_envvar=True,
              help="the service token (default: a new random one for a new service; kept on update)")
@_target_options
@click.option("--dry-run", is_flag=True, help="print the service config (token masked) and send nothing")
@click.option("--no-wait", is_flag=True, help="return once EAS accepted the request")
@click.option("--timeout", "timeout_s", type=click.IntRange(1), default=1800, show_default=True,
              help="seconds to wait for Running")
def eas(checkpoint, name, engine, template, sets, image, served_model_name, instance_type, resource_group, cpu,
        memory_gib, memory_mb, gpu, gpu_alias, tensor_parallel, dtype, shm_gb, keepalive_s, rolling, instances, autoscale,
        autoscale_concurrency, autoscale_qps, max_model_len, workspace_id, oss_prefix, oss_endpoint, token, region,
        endpoint, dry_run, no_wait, timeout_s):
    """Deploy CHECKPOINT (a run id, a folder or oss://...) as a PAI-EAS service: create it, or update it if it exists.

    A student serves the OpenAI API (vLLM or SGLang); a reward model serves POST /v1/score for GRPO.
    A local checkpoint goes to a new folder under --oss-prefix named for its content, so an update
    never writes under the files that running instances read.
    """
    import json
    from pathlib import Path

    from rich.console import Console

    from pai_distil.core.artifacts import digest
    from pai_distil.cloud.deploy import eas as eas_api
    from pai_distil.cloud.deploy.checkpoint import resolve
    from pai_distil.cloud.deploy.eas_config import DTYPES, REWARD, EasOptions, build, engine_for, masked, versioned_path
    from pai_distil.cloud.pai.config import load

    cpu, memory_mb = _instance_size(cpu, memory_gib, memory_mb)
    gpu = gpu if gpu is not None else gpu_alias
    target = _target(region, endpoint)
    region = target.region
    ckpt = resolve(checkpoint)
    engine = engine_for(engine, ckpt.reward, ckpt.location)
    if engine == REWARD:
        image = image or load().image
    if ckpt.on_oss:
        oss_path = ckpt.location
    elif oss_prefix:
        if not oss_prefix.startswith("oss://") or oss_prefix.rstrip("/").count("/") < 3:
            raise UserError(f"--oss-prefix {oss_prefix!r}: write oss://BUCKET/PATH/ (a folder for the checkpoint)")
        oss_path = versioned_path(oss_prefix, digest(ckpt.location))
    else:
        raise UserError(f"{ckpt.location} is a local folder; EAS mounts checkpoints from OSS: pass "
                        "--oss-prefix oss://BUCKET/PATH/ to upload it there first")
    given_token = token
    options = EasOptions(
        service_name=name or ckpt.name, oss_path=oss_path, engine=engine, served_model_name=served_model_name,
        image=image, region=region, instance_type=instance_type, resource_group=resource_group, cpu=cpu,
        memory_mb=memory_mb, gpu=gpu, instances=instances, autoscale=_autoscale(autoscale),
        autoscale_concurrency=autoscale_concurrency, autoscale_qps=autoscale_qps,
        workspace_id=workspace_id or _configured_workspace(), max_model_len=max_model_len,
        token=given_token or secrets.token_urlsafe(24), template=template,
        dtype=dtype or (ckpt.dtype if ckpt.dtype in DTYPES else "bfloat16"), tensor_parallel=tensor_parallel,
        shm_gb=shm_gb, keepalive_s=keepalive_s, rolling=rolling)
    config = build(options, sets)
    defaults = []
    if engine != REWARD and not dtype:
        stated = "the checkpoint's" if ckpt.dtype in DTYPES else "the checkpoint states none"
        defaults.append(f"--dtype {options.dtype} ({stated})")
    if engine != REWARD and not tensor_parallel:
        defaults.append(f"--tensor-parallel {options.tensor_parallel_size()} (GPUs per instance)")
    click.echo(f"checkpoint at {oss_path}" + (f"; defaults: {', '.join(defaults)}" if defaults else ""), err=True)
    if dry_run:
        click.echo(json.dumps(masked(config), indent=2))
        return
    console = Console(stderr=True)
    c = eas_api.client(target)
    existing = eas_api.describe(c, target, options.service_name)
    if existing is not None and not given_token:
        options.token = existing.get("AccessToken")  # an update keeps the service's token
        config = build(options, sets)
    if not ckpt.on_oss:
        moved = eas_api.upload_checkpoint(Path(ckpt.location), oss_path, region, oss_endpoint, console)
        console.print(f"checkpoint in {oss_path}: {moved.summary()}")
    action, _ = eas_api.create_or_update(c, target, config)
    console.print(f"{action} EAS service [bold]{options.service_name}[/] in {region}")
    if no_wait:
        return
    svc = eas_api.wait_settled(c, target, options.service_name, console, timeout_s,
                               since_version=(existing or {}).get("CurrentVersion") if action == "updated" else None)
    _print_ready(svc, engine == REWARD)


def _print_ready(svc: dict, reward: bool) -> None:
    from pai_distil.cloud.deploy import eas as eas_api

    status = svc.get("Status")
    if status != eas_api.RUNNING:
        raise UserError(f"service {svc.get('ServiceName')} is {status}: {svc.get('Message') or svc.get('Reason') or 'no reason given'}")
    base_url = (svc.get("InternetEndpoint") or svc.get("IntranetEndpoint") or "").rstrip("/")
    if reward:
        click.echo(f"service {svc.get('ServiceName')} is Running at {base_url} (POST /v1/score)")
        click.echo(eas_api.reward_snippet(base_url, svc.get("AccessToken")))
        return
    click.echo(f"service {svc.get('ServiceName')} is Running at {base_url}/v1")
    click.echo(eas_api.openai_snippet(base_url + "/v1", eas_api.served_model_name(svc), svc.get("AccessToken")))


@deploy.command("list")
@_target_options
def list_services(region, endpoint):
    """EAS services of the region: name, status, instances, endpoint."""
    from rich.console import Console
    from rich.table import Table

    from pai_distil.cloud.deploy import eas as eas_api

    target = _target(region, endpoint)
    region = target.region
    services = eas_api.list_services(eas_api.client(target))
    if not services:
        click.echo(f"no EAS services in {region}; create one with `pai-distil deploy eas RUN`")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("name", "status", "instances", "version", "updated"):
        table.add_column(col, no_wrap=True)
    table.add_column("endpoint", overflow="fold")
    for s in services:
        status = s.get("Status", "?")
        table.add_row(s.get("ServiceName", "?"), f"[{eas_api.STATUS_STYLE.get(status, '')}]{status}[/]",
                      f"{s.get('RunningInstance', 0)}/{s.get('TotalInstance', 0)}", str(s.get("CurrentVersion", "-")),
                      s.get("UpdateTime", "-"), s.get("InternetEndpoint", "-"))
    Console(width=None if click.get_text_stream("stdout").isatty() else 1000).print(table)


@deploy.command("describe")
@click.argument("name")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="the whole DescribeService answer (token masked)")
def describe_service(name, region, endpoint, as_json):
    """Status, endpoint and config of the EAS service NAME."""
    import json

    from rich.console import Console
    from rich.table import Table

    from pai_distil.cloud.deploy import eas as eas_api
    from pai_distil.cloud.deploy.eas_config import mask_token, masked

    target = _target(region, endpoint)
    region = target.region
    svc = eas_api.describe(eas_api.client(target), target, name)
    if svc is None:
        raise UserError(f"there is no EAS service {name!r} in {region}; `pai-distil deploy list` shows them")
    try:
        svc["ServiceConfig"] = json.dumps(masked(json.loads(svc.get("ServiceConfig") or "{}"), svc.get("AccessToken")))
    except json.JSONDecodeError:
        pass
    svc["AccessToken"] = mask_token(svc.get("AccessToken"))
    if as_json:
        click.echo(json.dumps(svc, indent=2))
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in ("ServiceName", "Status", "Message", "RunningInstance", "TotalInstance", "CurrentVersion",
                "LatestVersion", "InternetEndpoint", "IntranetEndpoint", "AccessToken", "Image", "CreateTime",
                "UpdateTime"):
        table.add_row(key, str(svc.get(key, "-")))
    table.add_row("served model", eas_api.served_model_name(svc))
    Console().print(table)


@deploy.command("delete")
@click.argument("name")
@_target_options
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def delete_service(name, region, endpoint, yes):
    """Delete the EAS service NAME (its instances stop; the checkpoint on OSS stays)."""
    from pai_distil.cloud.deploy import eas as eas_api

    target = _target(region, endpoint)
    region = target.region
    c = eas_api.client(target)
    if not yes:
        click.confirm(f"delete EAS service {name} in {region}?", abort=True)
    eas_api.delete(c, target, name)
    click.echo(f"deleting EAS service {name}")


COMMANDS = [deploy]
