"""One model of an HTTP service the jobs call: a teacher or judge, a served model under evaluation, a
served reward model. They differ in their defaults and in a few fields, not in how they are reached."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from .. import url_credentials
from .base import Strict

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def http_url(v: str) -> str:
    """An endpoint's base URL, without its trailing slash."""
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
    if (m := url_credentials.QUERY_SECRET.search(v)) is not None:
        raise ValueError(f"base_url carries a key in its query string ({m.group(1)[1:]}…), which would be written "
                         "into the run's spec and logs; remove it and name the variable holding the key in api_key_env")
    return v.rstrip("/")


def env_name(v: str | None) -> str | None:
    """`api_key_env`: the name of a variable, refused (without echoing it) when it looks like the key itself."""
    if v is not None and not _ENV_NAME.fullmatch(v):
        raise ValueError("api_key_env holds the name of an environment variable, not the key itself; put the key "
                         "in a variable (export TEACHER_KEY=...) and name that variable here")
    return v


class Service(Strict):
    """An HTTP service: where it is, the environment variable holding its key, how long to wait and retry."""

    base_url: str = Field(description="base URL ending in /v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key (never the key)")
    max_retries: int = Field(4, ge=0, le=20, description="retries on 429, 5xx and timeouts (exponential backoff)")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout in seconds")

    _url = field_validator("base_url")(classmethod(lambda cls, v: http_url(v)))
    _key_env = field_validator("api_key_env")(classmethod(lambda cls, v: env_name(v)))


class Endpoint(Service):
    """An OpenAI-compatible chat endpoint serving the model to evaluate (vLLM, PAI-EAS, DashScope)."""

    model: str = Field(description="model name the endpoint serves")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")


class Teacher(Endpoint):
    """An OpenAI-compatible chat endpoint (vLLM on PAI-EAS, DashScope, the synthetic teacher)."""

    base_url: str = Field("http://127.0.0.1:8400/v1", description="base URL ending in /v1")
    model: str = Field("oracle", description="model name the endpoint serves")
    api_key_env: str | None = Field("PAI_DISTIL_TEACHER_API_KEY",
                                    description="name of the environment variable holding the API key (never the key itself)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    max_tokens: int = Field(4096, ge=1, description="completion budget per request")
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class RewardEndpoint(Service):
    """A served reward model (`pai-distil reward serve`, or the same API on PAI-EAS)."""

    base_url: str = Field(description="base URL, e.g. http://127.0.0.1:8500 (the server answers POST /v1/score)")
    api_key_env: str | None = Field("PAI_DISTIL_REWARD_API_KEY",
                                    description="name of the environment variable holding the API key (never the key)")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    batch_size: int = Field(64, ge=1, le=1024, description="items per request")
