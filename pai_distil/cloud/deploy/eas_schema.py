"""The PAI-EAS service configuration (the JSON body of CreateService / UpdateService), as far as
deployments of this project use it.

Field names and shapes follow EAS's "Deploy services with JSON" reference: `metadata` (name,
instance, resources, workspace), `cloud.computing.instances[].type`, `containers[]` (image,
script or command, port, env, `startup_check` / `readiness_check` / `liveness_check` probes
with `http_get`, `tcp_socket` or `exec`), `storage[]` (`mount_path` with an `oss` source, or an
`empty_dir` in memory for /dev/shm, `size_limit` in GB), `metadata.rpc.keepalive` (ms a request
may take), `metadata.rolling_strategy` (`max_surge`, `max_unavailable`: a count or a percentage)
and `autoscaler` (`min`, `max`, `scaleStrategies[]` of `metricName` / `threshold`). The blocks this
project writes are checked strictly; the top-level objects accept EAS's other fields, so a
user's template may use them. Both `deploy eas` (before sending) and the emulator (on receipt)
validate with it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pai_distil.core.errors import UserError

SERVICE_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class HttpGet(_Strict):
    path: str = Field(pattern=r"^/")
    port: int = Field(ge=1, le=65535)
    scheme: Literal["HTTP", "HTTPS"] | None = None


class TcpSocket(_Strict):
    port: int = Field(ge=1, le=65535)


class Exec(_Strict):
    command: list[str] = Field(min_length=1)


class Probe(_Strict):
    http_get: HttpGet | None = None
    tcp_socket: TcpSocket | None = None
    exec: Exec | None = None
    initial_delay_seconds: int | None = Field(None, ge=0)
    period_seconds: int | None = Field(None, ge=1)
    timeout_seconds: int | None = Field(None, ge=1)
    failure_threshold: int | None = Field(None, ge=1)
    success_threshold: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_method(self) -> Probe:
        if sum(m is not None for m in (self.http_get, self.tcp_socket, self.exec)) != 1:
            raise ValueError("a probe has exactly one of http_get, tcp_socket, exec")
        return self


class EnvVar(_Strict):
    name: str
    value: str


class Container(_Open):
    image: str = Field(min_length=1)
    script: str | None = None
    command: str | None = None
    port: int = Field(ge=1, le=65535)
    env: list[EnvVar] | None = None
    startup_check: Probe | None = None
    readiness_check: Probe | None = None
    liveness_check: Probe | None = None

    @model_validator(mode="after")
    def _start_command(self) -> Container:
        if not (self.script or self.command):
            raise ValueError("a container needs `script` (or `command`): what to run at start")
        return self


class OssSource(_Strict):
    path: str = Field(pattern=r"^oss://[a-z0-9][a-z0-9-]{1,61}[a-z0-9]/")
    readOnly: bool | None = None
    endpoint: str | None = None


class EmptyDir(_Strict):
    medium: Literal["memory"] | None = None  # memory: a tmpfs (/dev/shm); else the node's disk
    size_limit: int | None = Field(None, ge=1, description="GB")


class Storage(_Open):
    mount_path: str = Field(pattern=r"^/")
    oss: OssSource | None = None
    empty_dir: EmptyDir | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Storage:
        if self.oss is not None and self.empty_dir is not None:
            raise ValueError("a storage entry mounts one source: oss or empty_dir, not both")
        return self


class Instance(_Strict):
    type: str = Field(min_length=1)
    spot_price_limit: float | None = None


class Computing(_Open):
    instances: list[Instance] | None = None
    instance_type: str | None = None


class Cloud(_Open):
    computing: Computing | None = None


class ScaleStrategy(_Strict):
    metricName: Literal["qps", "cpu", "gpu[util]", "concurrency"]
    threshold: float = Field(gt=0)
    service: str | None = None


class Autoscaler(_Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)
    scaleStrategies: list[ScaleStrategy] = Field(min_length=1)
    behavior: dict | None = None

    @model_validator(mode="after")
    def _range(self) -> Autoscaler:
        if self.max < self.min:
            raise ValueError(f"autoscaler max ({self.max}) is below min ({self.min})")
        return self


class Rpc(_Open):
    keepalive: int | None = Field(None, ge=1, description="ms a request may take before EAS answers 408")


Replicas = int | str  # a count, or a percentage such as "20%"


class RollingStrategy(_Strict):
    max_surge: Replicas | None = None
    max_unavailable: Replicas | None = None

    @model_validator(mode="after")
    def _counts(self) -> RollingStrategy:
        for name in ("max_surge", "max_unavailable"):
            value = getattr(self, name)
            if isinstance(value, str) and not re.fullmatch(r"\d{1,3}%", value):
                raise ValueError(f"{name} {value!r} is neither a count nor a percentage such as '20%'")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} is negative")
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("max_surge and max_unavailable are both 0: an update could never replace an instance")
        return self


class Metadata(_Open):
    name: str = Field(pattern=SERVICE_NAME)
    instance: int = Field(ge=0)
    workspace_id: str | None = None
    resource: str | None = None
    cpu: int | None = Field(None, ge=1)
    memory: int | None = Field(None, ge=1, description="MB")
    gpu: int | None = Field(None, ge=0)
    token: str | None = Field(None, min_length=1)
    rpc: Rpc | None = None
    rolling_strategy: RollingStrategy | None = None


class ServiceConfig(_Open):
    metadata: Metadata
    cloud: Cloud | None = None
    containers: list[Container] = Field(min_length=1)
    storage: list[Storage] | None = None
    autoscaler: Autoscaler | None = None

    @model_validator(mode="after")
    def _resources(self) -> ServiceConfig:
        typed = self.cloud and self.cloud.computing and (self.cloud.computing.instances or self.cloud.computing.instance_type)
        if not typed and not (self.metadata.resource and self.metadata.cpu and self.metadata.memory):
            raise ValueError("give resources: an instance type (cloud.computing.instances[].type), or a resource "
                             "group (metadata.resource) with metadata.cpu and metadata.memory")
        return self


def problems(config: dict) -> list[str]:
    """What is wrong with a service config, one line per problem (empty when it is valid)."""
    try:
        ServiceConfig.model_validate(config)
    except ValidationError as e:
        return [f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
    return []


def check(config: dict, where: str = "the EAS service config") -> ServiceConfig:
    found = problems(config)
    if found:
        raise UserError(f"{where} is not a valid EAS service config: {found[0]}"
                        + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    return ServiceConfig.model_validate(config)


def valid_name(name: str) -> bool:
    return re.match(SERVICE_NAME, name) is not None
