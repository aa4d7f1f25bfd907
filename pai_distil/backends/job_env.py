"""What a job may see of this machine's environment: the job contract, the secrets its config
names, and an allowlist of harmless variables. Every backend builds a job's environment here:
`contract_env` (the contract's variables, with paths as the job sees them), `secrets` (the named
secrets this machine holds) and, for a job on this machine, `job_environment`.

Why an allowlist rather than the client's environment minus known secrets: a job runs
third-party libraries and judges model-written code, and anything it is handed can end up in a
log or an artifact. Credentials are named too many ways (`*_SECRET`, `*_TOKEN`, cloud SDK
profiles) for a denylist to catch; a job needs only the keys its config names (`api_key_env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pai_distil.core import url_credentials
from pai_distil.core.contract import input_env_name
from pai_distil.core.env_numbers import STOP_GRACE_S

from ..paths import ENV_HOME

if TYPE_CHECKING:
    from pai_distil.core.config import JobSpec

# Exact names a job may inherit: how to find programs, files and its own code, the locale, proxies and
# certificates for the endpoints it calls, thread counts, and pai-distil's own non-secret settings.
HARMLESS = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR", "LANG", "LANGUAGE", "VIRTUAL_ENV", "PYTHONPATH",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    ENV_HOME, STOP_GRACE_S,
})
# Families of settings of the libraries a job runs (devices, NCCL, the hubs' caches and offline mode, the
# experiment trackers of `train.report_to`).
HARMLESS_PREFIXES = ("LC_", "CUDA_", "NCCL_", "NVIDIA_", "HF_", "TRANSFORMERS_", "TORCH_", "PYTORCH_", "MODELSCOPE_",
                     "WANDB_", "SWANLAB_", "MLFLOW_")
# Secrets that a harmless prefix would admit. A job on this machine that downloads a private model, or
# logs to a tracker, finds its token where the tool's login keeps it (under HOME, HF_HOME) instead.
NEVER = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "WANDB_API_KEY", "SWANLAB_API_KEY",
                   "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"})


def named_secrets(config: dict) -> list[str]:
    """The variable names a stage config's `*api_key_env` fields hold (teacher, judge, reward service), and
    those that carry its URLs' passwords (core.url_credentials)."""
    named: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k.endswith("api_key_env") and isinstance(v, str) and v:
                    named.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(config)
    return sorted(set(named) | set(url_credentials.names(config)))


def secrets(config: dict, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secrets a stage config names that hold a value here, by name: what a job may be handed."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in named_secrets(config) if environ.get(name)}


def contract_env(spec: JobSpec, config_path: str | Path, *, master_addr: str = "127.0.0.1",
                 master_port: int = 29500, rank: int = 0, inputs: dict[str, str] | None = None,
                 output: str | None = None, checkpoint_dir: str | None = None) -> dict[str, str]:
    """The job contract's variables (docs/architecture.md); paths may be overridden for a container's view."""
    env = {
        "PAI_DISTIL_STAGE": spec.stage,
        "PAI_DISTIL_RUN_ID": spec.run_id,
        "PAI_DISTIL_CONFIG": str(config_path),
        **{input_env_name(name): str(path) for name, path in (inputs or spec.inputs).items()},
        "PAI_DISTIL_OUTPUT": str(output or spec.output),
        "PAI_DISTIL_CHECKPOINT_DIR": str(checkpoint_dir or spec.checkpoint_dir),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(spec.nodes),
        "RANK": str(rank),
        "NPROC_PER_NODE": str(spec.procs_per_node or 1),
        "PYTHONUNBUFFERED": "1",
    }
    if spec.resources.gpu:
        env["PAI_DISTIL_GPUS"] = str(spec.resources.gpu)
    env.update(spec.env)
    return env


def harmless(name: str) -> bool:
    return name not in NEVER and (name in HARMLESS or name.startswith(HARMLESS_PREFIXES))


def job_environment(config: dict, contract: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a job on this machine: harmless variables, its secrets, then its contract.

    Example: `job_environment(spec.config, contract_env(spec, path))` is what a `process` job gets.
    """
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if harmless(k)}
    env.update(secrets(config, environ))
    env.update(contract)
    return env
