"""EAS service configs generated from the overridable templates in `templates/`.

A template is JSON whose values may hold `${variable}` placeholders. A value that is exactly one
placeholder takes the variable's typed value (a number, an object, or nothing: the key is then
left out); placeholders inside longer strings are replaced by text. Empty objects and lists
left behind are dropped, so optional blocks (an instance type, an autoscaler) vanish when
unset. `--set a.b=value` edits the result afterwards. Users copy a template, change it, and
pass it with `--template FILE`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pai_distil.core.artifacts import REWARD_HEAD
from pai_distil.core.errors import UserError
from pai_distil.cloud.deploy import eas_schema

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "templates"
REWARD = "reward"  # the engine of a reward model: `pai-distil reward serve` in the project's job image
ENGINES = {
    # image: the official EAS images of each engine; {region} is filled in
    "vllm": {"template": "eas-vllm.json", "image": "eas-registry-vpc.{region}.cr.aliyuncs.com/pai-eas/vllm:0.11.2-mows0.5.1"},
    "sglang": {"template": "eas-sglang.json",
               "image": "eas-registry-vpc.{region}.cr.aliyuncs.com/pai-eas/sglang:0.5.5-mows0.5.1"},
    # no official image: the job image (`images build --target gpu --push`, `config set image=`) has the server
    REWARD: {"template": "eas-reward.json", "image": None},
}
REASONING_PARSER = "qwen3"  # the `<think>…</think>` format with enable_thinking, which the students use
MODEL_DIR = "/mnt/model"
PORT = 8000
DTYPES = ("bfloat16", "float16", "float32")
SHM_GB = 16  # /dev/shm for NCCL between tensor-parallel ranks and the servers' worker processes
KEEPALIVE_S = 600  # metadata.rpc.keepalive: a long chain of thought takes minutes to stream
# EAS's own instance types name their GPU count: ml.gu7i.c16m60.1-gu30 has 1, ml.gu8xf.c96m1600.8-gu108 has 8
ML_GPUS = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+\.(\d+)-[a-z]+\d*$")
ROLLING = re.compile(r"^(\d+%?)/(\d+%?)$")
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
MASK = "****"
TOKEN_ENVS = ("PAI_DISTIL_REWARD_API_KEY",)  # env entries of the templates that carry the service token


def engine_for(requested: str | None, reward: bool | None, where: str) -> str:
    """The engine of a checkpoint: `--engine` when it fits, else the reward server for a reward model, else vLLM."""
    if reward and requested not in (None, REWARD):
        raise UserError(f"{where} is a reward model ({REWARD_HEAD}), which {requested} cannot serve: "
                        "remove --engine or pass --engine reward")
    if reward is False and requested == REWARD:
        raise UserError(f"{where} is not a reward model (no {REWARD_HEAD}): deploy it with --engine vllm or sglang")
    return requested or (REWARD if reward else "vllm")


@dataclass
class EasOptions:
    """What a user chooses for a deployment; everything else comes from the template."""

    service_name: str
    oss_path: str
    engine: str = "vllm"
    served_model_name: str | None = None
    image: str | None = None
    region: str = "cn-hangzhou"
    instance_type: str | None = None
    resource_group: str | None = None
    cpu: int | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    instances: int = 1
    autoscale: tuple[int, int] | None = None
    autoscale_concurrency: int = 32
    autoscale_qps: float | None = None
    workspace_id: str | None = None
    oss_endpoint: str | None = None
    max_model_len: int = 4096
    token: str | None = None
    template: str | None = None
    dtype: str = "bfloat16"  # the dtype the server computes in: the checkpoint's own
    tensor_parallel: int | None = None  # None: the GPU count of an instance
    shm_gb: int = SHM_GB
    keepalive_s: int = KEEPALIVE_S
    rolling: str | None = None  # MAX_SURGE/MAX_UNAVAILABLE, each a count or a percentage

    def gpu_count(self) -> int | None:
        """GPUs per instance: --gpus, else what an EAS instance type's name says (None: not known)."""
        if self.gpu:
            return self.gpu
        m = ML_GPUS.match(self.instance_type or "")
        return int(m.group(1)) if m else None

    def tensor_parallel_size(self) -> int:
        return self.tensor_parallel or self.gpu_count() or 1

    def rolling_strategy(self) -> dict | None:
        if self.rolling is None:
            return None
        m = ROLLING.match(self.rolling)
        if not m or m.groups() == ("0", "0"):
            raise UserError(f"--rolling {self.rolling!r}: write MAX_SURGE/MAX_UNAVAILABLE, each a number of instances or "
                            "a percentage, not both 0 (e.g. --rolling 1/0: one extra instance, none down)")
        return {"max_surge": _count(m.group(1)), "max_unavailable": _count(m.group(2))}

    def variables(self) -> dict:
        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.engine == REWARD:
            self._check_reward()
        if not eas_schema.valid_name(self.service_name):
            raise UserError(f"service name {self.service_name!r} is not valid on EAS: lower-case letters, digits and "
                            "underscores, starting with a letter (at most 64); pass --name")
        if not self.instance_type and not self.resource_group:
            raise UserError("give the resources: --instance-type TYPE (e.g. ecs.gn7i-c8g1.2xlarge), or "
                            "--resource-group ID with --cpu, --memory-gib (or --memory, MB) and --gpus")
        if self.resource_group and not (self.cpu and self.memory_mb):
            raise UserError("--resource-group needs --cpu and --memory-gib (or --memory, MB) per instance")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: one of {', '.join(DTYPES)}")
        gpus = self.gpu_count()
        if self.tensor_parallel and gpus and self.tensor_parallel > gpus:
            raise UserError(f"--tensor-parallel {self.tensor_parallel} is more than the {gpus} GPUs of an instance; "
                            f"give at most {gpus}")
        autoscaler = None
        if self.autoscale:
            lo, hi = self.autoscale
            metric = ("qps", self.autoscale_qps) if self.autoscale_qps else ("concurrency", self.autoscale_concurrency)
            autoscaler = {"min": lo, "max": hi, "scaleStrategies": [{"metricName": metric[0], "threshold": metric[1]}]}
        return {
            "service_name": self.service_name, "served_model_name": self.served_model_name or self.service_name,
            "image": self.image or ENGINES[self.engine]["image"].format(region=self.region),
            "instances": self.instances, "instance_type": self.instance_type,
            "resource_group": self.resource_group, "cpu": self.cpu, "memory_mb": self.memory_mb,
            "gpu": self.gpu if self.resource_group else None, "workspace_id": self.workspace_id,
            "oss_path": self.oss_path, "oss_endpoint": self.oss_endpoint, "model_dir": MODEL_DIR, "port": PORT,
            "reasoning_parser": REASONING_PARSER, "max_model_len": self.max_model_len, "token": self.token,
            "autoscaler": autoscaler, "dtype": self.dtype, "tensor_parallel": self.tensor_parallel_size(),
            "shm_gb": self.shm_gb, "keepalive_ms": self.keepalive_s * 1000, "rolling_strategy": self.rolling_strategy(),
        }

    def _check_reward(self) -> None:
        if self.served_model_name:
            raise UserError("--served-model-name names the chat model of vllm and sglang; a reward service answers "
                            "POST /v1/score: remove it")
        if not self.image:
            raise UserError("--engine reward runs the pai-distil job image: pass --image REGISTRY/pai-distil-gpu:TAG "
                            "(`pai-distil images build --target gpu --push REGISTRY`) or set it once with "
                            "`pai-distil config set image=...`")
        if not self.token:
            raise UserError("the reward server checks the service token: pass --token or set $PAI_DISTIL_EAS_TOKEN")

    def template_path(self) -> Path:
        path = Path(self.template).expanduser() if self.template else TEMPLATES_DIR / ENGINES[self.engine]["template"]
        if not path.is_file():
            raise UserError(f"template {str(path)!r} does not exist; copy one of {TEMPLATES_DIR}/eas-*.json and "
                            "pass it with --template")
        return path


def _count(text: str) -> int | str:
    return text if text.endswith("%") else int(text)


def versioned_path(prefix: str, digest: str) -> str:
    """Where a local checkpoint goes under `--oss-prefix`: a folder named for its content, so an update
    never writes under the files running replicas read, and no shard of an older one is left beside it."""
    return f"{prefix.rstrip('/')}/{digest[:16]}/"


_DROP = object()


def _fill(node, variables: dict, where: str):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            filled = _fill(v, variables, where)
            if filled is not _DROP:
                out[k] = filled
        return out or _DROP
    if isinstance(node, list):
        out = [x for x in (_fill(v, variables, where) for v in node) if x is not _DROP]
        return out or _DROP
    if not isinstance(node, str):
        return node
    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        value = _value(whole.group(1), variables, where)
        return _DROP if value is None else value

    def text(m: re.Match) -> str:
        value = _value(m.group(1), variables, where)
        if value is None:
            raise UserError(f"{where}: ${{{m.group(1)}}} is used inside a string but has no value")
        return str(value)

    return _PLACEHOLDER.sub(text, node)


def _value(name: str, variables: dict, where: str):
    if name not in variables:
        raise UserError(f"{where}: unknown placeholder ${{{name}}}; known: {', '.join(sorted(variables))}")
    return copy.deepcopy(variables[name])


def render(template: Path, variables: dict) -> dict:
    try:
        data = json.loads(template.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"template {template} is not JSON: {e.msg} at line {e.lineno}") from None
    filled = _fill(data, variables, f"template {template}")
    return {} if filled is _DROP else filled


def apply_sets(config: dict, sets: tuple[str, ...]) -> dict:
    """`--set metadata.instance=2`, `--set containers.0.image=...`: the overrides parser `submit` uses
    (values read as YAML, so JSON too; list items by index)."""
    from pai_distil.core.config.overrides import parse, set_path

    for keys, value in parse(sets, "--set"):
        set_path(config, keys, value, f"--set {'.'.join(keys)}")
    return config


def build(options: EasOptions, sets: tuple[str, ...] = ()) -> dict:
    """The service config for `options`, validated against EAS's format."""
    template = options.template_path()
    config = apply_sets(render(template, options.variables()), sets)
    eas_schema.check(config, f"the config from {template.name}")
    return config


def masked(config: dict, *tokens: str | None) -> dict:
    """A copy safe to print: metadata.token and `tokens` masked where they are and in the text, so a
    template that also hands the token to the container (eas-reward.json) does not show it."""
    from pai_distil.masking import masked as mask

    meta = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    return mask(config, names=["token", *TOKEN_ENVS], values=[meta.get("token"), *tokens], mark=MASK)


def mask_token(token: str | None) -> str:
    return MASK if not token else f"{token[:2]}{MASK}{token[-2:]}" if len(token) >= 12 else MASK
