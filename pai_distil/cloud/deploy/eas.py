"""PAI-EAS services through the official SDK (alibabacloud-eas20210701): create or update, wait, list, delete.

Credentials come from the standard Alibaba Cloud chain (pai_distil.cloud.pai.credentials); they are
never printed. Checkpoint uploads go through pai_distil.cloud.pai.oss (checksums, resumable parts). The endpoint is
EAS's regional one (pai-eas.<region>.aliyuncs.com) unless `endpoint` names another, such as
the local emulator (`http://127.0.0.1:8790`). The SDK is imported inside the functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pai_distil.core.errors import UserError
from pai_distil.cloud.deploy.eas_config import mask_token

RUNNING, FAILED = "Running", "Failed"
SETTLED = {RUNNING, FAILED, "Stopped"}
STATUS_STYLE = {"Running": "green", "Failed": "red", "Stopped": "yellow", "Creating": "blue", "Updating": "blue",
                "Waiting": "blue", "Deleting": "yellow"}


@dataclass(frozen=True)
class Target:
    region: str
    endpoint: str | None = None  # None: EAS's public endpoint of the region

    @property
    def host(self) -> str:
        return (self.endpoint or f"pai-eas.{self.region}.aliyuncs.com").split("://", 1)[-1].rstrip("/")

    @property
    def protocol(self) -> str:
        if self.endpoint and self.endpoint.startswith("http://"):
            return "http"
        return "http" if self.host.split(":")[0] in ("127.0.0.1", "localhost") else "https"


def client(target: Target):
    from alibabacloud_eas20210701.client import Client
    from alibabacloud_tea_openapi.models import Config

    from pai_distil.cloud.pai.credentials import chain

    return Client(Config(credential=chain(), region_id=target.region, endpoint=target.host,
                         protocol=target.protocol, read_timeout=30000, connect_timeout=10000))


def _call(what: str, fn, *args):
    """Run an SDK call; its errors become one line (the service's code and message, no secrets)."""
    from Tea.exceptions import TeaException, UnretryableException

    try:
        return fn(*args)
    except TeaException as e:
        raise UserError(f"EAS {what} failed: {e.code}: {e.message}".rstrip(": ")) from None
    except UnretryableException as e:
        raise UserError(f"EAS {what} failed: cannot reach the EAS endpoint ({str(e).splitlines()[0][:200]}); "
                        "check --region / --endpoint and the network") from None


def describe(c, target: Target, name: str) -> dict | None:
    """DescribeService as a dict, or None when there is no such service."""
    from Tea.exceptions import TeaException

    try:
        resp = c.describe_service(target.region, name)
    except TeaException as e:
        if (e.data or {}).get("statusCode") == 404 or "NotFound" in str(e.code):
            return None
        raise UserError(f"EAS DescribeService failed: {e.code}: {e.message}") from None
    return resp.body.to_map()


def create_or_update(c, target: Target, config: dict) -> tuple[str, dict]:
    """CreateService, or UpdateService when a service of that name exists; ("created"|"updated", response)."""
    from alibabacloud_eas20210701 import models

    name = config["metadata"]["name"]
    body = json.dumps(config)
    if describe(c, target, name) is None:
        kw = {"workspace_id": config["metadata"]["workspace_id"]} if config["metadata"].get("workspace_id") else {}
        resp = _call("CreateService", c.create_service, models.CreateServiceRequest(body=body, **kw))
        return "created", resp.body.to_map()
    resp = _call("UpdateService", c.update_service, target.region, name, models.UpdateServiceRequest(body=body))
    return "updated", resp.body.to_map()


def wait_settled(c, target: Target, name: str, console, timeout_s: float = 1800, poll_s: float = 2.0,
                 since_version: int | None = None) -> dict:
    """Poll DescribeService with a live status line until the service is Running (or Failed)."""
    from rich.live import Live
    from rich.text import Text

    start = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while True:
            svc = describe(c, target, name)
            if svc is None:
                raise UserError(f"service {name} disappeared while waiting for it (deleted elsewhere?)")
            status = svc.get("Status", "?")
            elapsed = time.monotonic() - start
            line = Text.assemble(("● ", STATUS_STYLE.get(status, "")), (f"{name} ", "bold"),
                                 (status, STATUS_STYLE.get(status, "")),
                                 f"  instances {svc.get('RunningInstance', 0)}/{svc.get('TotalInstance', 0)}"
                                 f"  {svc.get('Message') or svc.get('Reason') or ''}  {elapsed:.0f}s")
            live.update(line)
            current = svc.get("CurrentVersion")
            fresh = since_version is None or (isinstance(current, int) and current > since_version)
            if status == FAILED or (status in SETTLED and fresh):
                return svc
            if elapsed > timeout_s:
                raise UserError(f"service {name} is still {status} after {timeout_s:.0f} s; follow it with "
                                f"`pai-distil deploy describe {name}`")
            time.sleep(poll_s)


def list_services(c) -> list[dict]:
    from alibabacloud_eas20210701 import models

    out, page = [], 1
    while True:
        resp = _call("ListServices", c.list_services, models.ListServicesRequest(page_number=page, page_size=100))
        body = resp.body.to_map()
        out += body.get("Services") or []
        if len(out) >= int(body.get("TotalCount") or 0) or not body.get("Services"):
            return out
        page += 1


def delete(c, target: Target, name: str) -> None:
    if describe(c, target, name) is None:
        raise UserError(f"there is no EAS service {name!r} in {target.region}; `pai-distil deploy list` shows them")
    _call("DeleteService", c.delete_service, target.region, name)


def openai_snippet(base_url: str, model: str, token: str | None) -> str:
    """Code a user pastes to call the service; the token is masked (read it from the environment instead)."""
    return (
        "import os\n"
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{base_url}\", api_key=os.environ[\"OPENAI_API_KEY\"])  "
        f"# OPENAI_API_KEY={mask_token(token)}\n"
        "r = client.chat.completions.create(\n"
        f"    model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"What is 17 * 23?\"}}],\n"
        "    extra_body={\"chat_template_kwargs\": {\"enable_thinking\": True}})  # False: answer without thinking\n"
        "print(r.choices[0].message.reasoning_content, r.choices[0].message.content)"
    )


def reward_snippet(base_url: str, token: str | None) -> str:
    """The `reward.endpoint` block of a grpo config that scores with the service; the key stays in the environment."""
    return (
        "# grpo config: score with this service (export PAI_DISTIL_REWARD_API_KEY=<the service token>)\n"
        "reward:\n"
        "  endpoint:\n"
        f"    base_url: {base_url}\n"
        f"    api_key_env: PAI_DISTIL_REWARD_API_KEY  # token {mask_token(token)}"
    )


def served_model_name(svc: dict) -> str:
    """The `--served-model-name` of the service's start command, else the service name."""
    import shlex

    try:
        config = json.loads(svc.get("ServiceConfig") or "{}")
        script = (config.get("containers") or [{}])[0].get("script") or ""
        args = shlex.split(script)
        return args[args.index("--served-model-name") + 1]
    except (ValueError, IndexError, AttributeError, json.JSONDecodeError):
        return svc.get("ServiceName", "")


def upload_checkpoint(local: Path, oss_prefix: str, region: str, oss_endpoint: str | None, console):
    """Put a checkpoint folder under `oss://bucket/prefix/` (files already there with the same checksum are skipped)."""
    from pai_distil.cloud.pai.config import load
    from pai_distil.cloud.pai.oss import Storage

    bucket, _, prefix = oss_prefix[len("oss://"):].partition("/")
    changes = {"oss_bucket": bucket, "region": region, **({"oss_endpoint": oss_endpoint} if oss_endpoint else {})}
    storage = Storage(load().model_copy(update=changes), console)
    storage.ensure_bucket()
    return storage.upload(local, prefix.rstrip("/"), label=f"upload → {oss_prefix}")
