"""Talking to a served model (deploy local, PAI-EAS, any OpenAI-compatible server) from the CLI.

`pai-distil chat` and `pai-distil evaluate --endpoint` share this: the base URL (an EAS
endpoint without `/v1` gets it), the token from an environment variable, and the model name
asked of `/v1/models` when not given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pai_distil.core.errors import UserError


@dataclass(frozen=True)
class Served:
    base_url: str
    model: str
    api_key_env: str | None

    @property
    def api_key(self) -> str:
        return (os.environ.get(self.api_key_env) if self.api_key_env else None) or "EMPTY"


def base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UserError(f"{url!r} is not an endpoint URL; give http(s)://HOST:PORT/v1 (or an EAS endpoint)")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def connect(url: str, model: str | None, api_key_env: str | None) -> Served:
    """The endpoint, checked by listing its models (so a wrong URL or token fails here, in one line)."""
    import openai

    served = Served(base_url(url), model or "", api_key_env)
    client = openai.OpenAI(base_url=served.base_url, api_key=served.api_key, max_retries=1, timeout=30)
    try:
        models = [m.id for m in client.models.list().data]
    except openai.AuthenticationError:
        where = f"${api_key_env}" if api_key_env else "no token (pass --api-key-env)"
        raise UserError(f"{served.base_url} refused the token from {where} (401); set it to the service's "
                        "token (`pai-distil deploy describe NAME` shows it masked)") from None
    except openai.APIConnectionError:
        raise UserError(f"cannot connect to {served.base_url}; is the server running (pai-distil deploy local / "
                        "deploy list)?") from None
    except openai.APIStatusError as e:
        raise UserError(f"{served.base_url}/models answered {e.status_code}: {e.message}") from None
    if model is None:
        if not models:
            raise UserError(f"{served.base_url} serves no model; pass --model")
        return Served(served.base_url, models[0], api_key_env)
    if model not in models:
        raise UserError(f"{served.base_url} does not serve {model!r}; it serves {', '.join(models)}")
    return served
