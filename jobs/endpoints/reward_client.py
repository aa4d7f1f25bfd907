"""Scoring with a served reward model (`pai-distil reward serve`, or the same API on PAI-EAS)."""

from __future__ import annotations

import os
import time

import httpx

from pai_distil.core.config import RewardEndpoint

from pai_distil.core.contract import JobError
from pai_distil.core.url_credentials import unmasked


class RemoteScorer:
    """POST /v1/score in batches; retries connection errors, 429 and 5xx with exponential backoff."""

    def __init__(self, endpoint: RewardEndpoint):
        self.endpoint = endpoint
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=unmasked(endpoint.base_url), headers=headers, timeout=endpoint.timeout_s)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        out: list[float] = []
        step = self.endpoint.batch_size
        for k in range(0, len(prompts), step):
            items = [{"prompt": p, "completion": r} for p, r in zip(prompts[k:k + step], responses[k:k + step])]
            out += self._post(items)
        return out

    def _post(self, items: list[dict]) -> list[float]:
        url = f"{self.endpoint.base_url}/v1/score"
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                r = self.client.post("/v1/score", json={"items": items})
            except httpx.HTTPError as e:
                if attempt == self.endpoint.max_retries:
                    raise JobError(f"reward endpoint {url} is unreachable ({type(e).__name__}); start it with "
                                   "`pai-distil reward serve CHECKPOINT` or fix reward.endpoint.base_url") from None
            else:
                if r.status_code == 200:
                    scores = r.json().get("scores")
                    if not isinstance(scores, list) or len(scores) != len(items):
                        raise JobError(f"reward endpoint {url} answered without one score per item; "
                                       "check reward.endpoint.base_url")
                    return [float(s) for s in scores]
                if r.status_code in (401, 403):
                    env = self.endpoint.api_key_env
                    raise JobError(f"reward endpoint {url} refused the key (HTTP {r.status_code}); "
                                   f"set {env} to the server's API key" if env else
                                   f"reward endpoint {url} needs an API key; set reward.endpoint.api_key_env")
                if r.status_code != 429 and r.status_code < 500 or attempt == self.endpoint.max_retries:
                    raise JobError(f"reward endpoint {url} answered HTTP {r.status_code}: {r.text[:200]}")
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")
