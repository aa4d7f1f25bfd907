"""Where `--backend pai` sends things: the `[pai]` table of `<home>/config.toml`.

`pai-distil config set KEY=VALUE ...` writes it, `pai-distil config show` prints it. It holds
names and places only (region, workspace, bucket, endpoints, quota, image, VPC); credentials
come from the Alibaba Cloud credential chain (see credentials.py) and are never stored here.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pai_distil import paths
from pai_distil.core.errors import UserError
from pai_distil.core.suggest import did_you_mean
from pai_distil.core.config import Strict, explain

CONFIG_FILE = "config.toml"
ECS_SPEC_EXAMPLE = "ecs.gn7i-c8g1.2xlarge"  # one NVIDIA A10, 8 vCPU, 30 GiB: the example every message gives
SPOT_DISCOUNT_DEFAULT = 0.8  # DLC's own example value: pay at most 80% of the on-demand price
SPOT_MAX_RESTARTS = 3  # resubmissions of a preempted spot job when max_restarts is not set


class PaiConfig(Strict):
    region: str = Field("cn-hangzhou", description="region id, e.g. cn-hangzhou")
    workspace_id: str | None = Field(None, description="PAI workspace id")
    oss_bucket: str | None = Field(None, description="bucket for inputs, outputs and checkpoints")
    oss_endpoint: str | None = Field(None, description="e.g. https://oss-cn-hangzhou.aliyuncs.com; default from region")
    oss_prefix: str = Field("pai-distil", description="folder in the bucket for everything pai-distil writes")
    dlc_endpoint: str | None = Field(None, description="e.g. https://pai-dlc.cn-hangzhou.aliyuncs.com; default from region")
    dsw_endpoint: str | None = Field(None, description="e.g. https://pai-dsw.cn-hangzhou.aliyuncs.com; default from region")
    eas_endpoint: str | None = Field(None, description="e.g. https://pai-eas.cn-hangzhou.aliyuncs.com; default from region")
    image: str | None = Field(None, description="job image (a GPU training image in ACR)")
    ecs_spec: str | None = Field(None, description=f"instance type per node on public resources, e.g. {ECS_SPEC_EXAMPLE}")
    quota_id: str | None = Field(None, description="resource quota / group id; jobs then use ResourceConfig")
    spot: bool = Field(False, description="run on spot (preemptible) instances")
    spot_strategy: Literal["SpotWithPriceLimit"] = Field(
        "SpotWithPriceLimit", description="DLC's SpotSpec strategy; SpotWithPriceLimit is the one it documents")
    spot_discount_limit: float | None = Field(
        None, gt=0, le=1, description=f"highest price as a fraction of on-demand, e.g. 0.5; default "
                                      f"{SPOT_DISCOUNT_DEFAULT} unless spot_price_limit is set (DLC takes one of the two)")
    spot_price_limit: float | None = Field(None, gt=0, description="highest price in CNY per minute, instead of a discount")
    max_restarts: int | None = Field(
        None, ge=0, le=100, description=f"resubmissions of a job DLC failed through preemption or node loss; default "
                                        f"{SPOT_MAX_RESTARTS} on spot, 0 otherwise")
    oss_job_endpoint: str | None = Field(
        None, description="OSS host the jobs' data sources name, e.g. oss-cn-hangzhou-internal.aliyuncs.com; "
                          "default: the region's internal endpoint (traffic stays inside Alibaba Cloud)")
    oss_client_internal: bool = Field(
        False, description="the client uses the region's internal OSS endpoint too (it runs on ECS, DSW or DLC)")
    log_delay_s: float = Field(
        5.0, ge=0, le=600, description="seconds a pod's log line may take to reach GetPodLogs; the client reads "
                                       "windows of the log that ended at least this long ago, so none is missed")
    priority: int = Field(1, ge=1, le=9)
    max_running_minutes: int | None = Field(
        None, ge=1, description="JobMaxRunningTimeMinutes: DLC ends a job running longer (an NCCL hang stops "
                                "billing); default 4320 (3 days); `--max-runtime` overrides it per submit")
    termination_grace_s: int = Field(
        600, ge=30, le=7200, description="TerminationGracePeriodSeconds: how long a stopped or preempted pod has to "
                                         "save its checkpoint before it is killed")
    image_cuda: str | None = Field(None, description="CUDA version of the job image, e.g. 12.4; pre-flight picks "
                                                     "a node driver that runs it (default: the GPU image's)")
    gpu_driver: str | None = Field(None, description="Settings.Driver: the GPU driver DLC installs, e.g. 550.127.08; "
                                                     "default: the lowest the node offers that runs image_cuda")
    ram_role_arn: str | None = Field(
        None, description="a RAM role the job assumes (CredentialConfig): jobs get keys from it, not from Envs")
    accessibility: Literal["PRIVATE", "PUBLIC"] = Field(
        "PRIVATE", description="who in the workspace sees the job: PRIVATE (its creator) or PUBLIC")
    vpc_id: str | None = None
    switch_id: str | None = None
    security_group_id: str | None = None
    pass_secrets: bool = Field(
        False, description="hand a job the variables its config's api_key_env fields name (teacher, judge, reward "
                           "service tokens) as DLC Envs, which whoever can read the job in the workspace sees")

    @model_validator(mode="after")
    def _one_spot_limit(self) -> "PaiConfig":
        if self.spot_discount_limit is not None and self.spot_price_limit is not None:
            raise ValueError("spot_discount_limit and spot_price_limit are both set; DLC takes one of them: "
                             "unset one with `pai-distil config unset spot_price_limit`")
        return self

    def spot_limits(self) -> dict[str, float]:
        """The one price limit DLC's SpotSpec takes (`discount` or `price`)."""
        if self.spot_price_limit is not None:
            return {"price": self.spot_price_limit}
        return {"discount": self.spot_discount_limit if self.spot_discount_limit is not None else SPOT_DISCOUNT_DEFAULT}

    def restarts(self) -> int:
        """How many times a preempted job is resubmitted."""
        if self.max_restarts is not None:
            return self.max_restarts
        return SPOT_MAX_RESTARTS if self.spot else 0

    def job_oss_host(self) -> str:
        return self.oss_job_endpoint or f"oss-{self.region}-internal.aliyuncs.com"

    @field_validator("oss_endpoint", "dlc_endpoint", "dsw_endpoint", "eas_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:8790 for the emulator")
        return v.rstrip("/") if v else v

    def oss_url(self) -> str:
        if self.oss_endpoint:
            return self.oss_endpoint
        return f"https://oss-{self.region}{'-internal' if self.oss_client_internal else ''}.aliyuncs.com"

    def pop_endpoint(self, service: Literal["dlc", "dsw"]) -> tuple[str, str]:
        """(protocol, host[:port]) of a POP API, as tea-openapi's Config wants them."""
        url = self.dlc_endpoint if service == "dlc" else self.dsw_endpoint
        url = url or f"https://pai-{service}.{self.region}.aliyuncs.com"
        scheme, _, host = url.partition("://")
        return scheme, host


def config_path() -> Path:
    return paths.home() / CONFIG_FILE


def _read_file() -> dict:
    """The file's tables; anything but a [pai] table of known keys is refused, with the nearest name:
    a misspelt table or key would otherwise be ignored and its setting silently not applied."""
    p = config_path()
    if not p.is_file():
        return {}
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p} is not valid TOML ({e}); fix it or delete it and run `pai-distil config set`") from None
    for name, value in data.items():
        if name != "pai" or not isinstance(value, dict):
            where = f"[{name}]" if isinstance(value, dict) else f"{name} (outside any table)"
            nearest = did_you_mean(name, ['pai'], ' (did you mean [{}]?)') if isinstance(value, dict) else \
                did_you_mean(name, list(PaiConfig.model_fields), ' (did you mean {} under [pai]?)')
            raise UserError(f"{p}: {where} is not a setting; settings go in the [pai] table{nearest}, e.g. "
                            "`pai-distil config set oss_bucket=NAME` writes one")
    for key in data.get("pai", {}):
        _known(key, f"{p} [pai]")
    return data


def _known(key: str, where: str) -> None:
    """A UserError naming the nearest known key when `key` is no PaiConfig field."""
    if key not in PaiConfig.model_fields:
        raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, PaiConfig.model_fields, '; did you mean {}?')}"
                        " (`pai-distil config show` lists the keys)")


def load() -> PaiConfig:
    table = _read_file().get("pai", {})
    try:
        return PaiConfig.model_validate(table)
    except ValidationError as e:
        raise UserError(explain(e, f"{config_path()} [pai]")) from None


def require(cfg: PaiConfig, *fields: str) -> None:
    for f in fields:
        if getattr(cfg, f) in (None, ""):
            raise UserError(f"--backend pai needs `{f}` in {config_path()}; set it with "
                            f"`pai-distil config set {f}=VALUE`")


def _coerce(key: str, raw: str):
    _known(key, "config")
    field = PaiConfig.model_fields[key]
    if field.annotation in (bool,):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"config key {key} takes true or false, not {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if field.annotation in (int, int | None):
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"config key {key} takes a whole number, not {raw!r}") from None
    if field.annotation in (float, float | None):
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"config key {key} takes a number, not {raw!r}") from None
    return raw


def save(changes: dict[str, str], unset: tuple[str, ...] = ()) -> PaiConfig:
    """Validate the merged table first; the file is replaced only when it is valid."""
    data = _read_file()
    table = dict(data.get("pai", {}))
    for key, raw in changes.items():
        table[key] = _coerce(key, raw)
    for key in unset:
        _known(key, "config")
        table.pop(key, None)
    try:
        cfg = PaiConfig.model_validate(table)
    except ValidationError as e:
        raise UserError(explain(e, "config")) from None
    data["pai"] = table
    p = config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{CONFIG_FILE}")
    tmp.write_text(_dump(data))
    os.replace(tmp, p)
    return cfg


def _dump(data: dict) -> str:
    """TOML of tables of scalars (all this file holds); JSON string escapes are valid TOML."""
    out = []
    for table, values in data.items():
        out.append(f"[{table}]")
        for k, v in values.items():
            out.append(f"{k} = {json.dumps(v)}")
        out.append("")
    return "\n".join(out)
