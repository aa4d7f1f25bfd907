"""Passwords in endpoint URLs (`http://user:PASS@host/v1`), kept out of everything written or shown.

Why moved rather than masked where printed: the config a job reads is itself a file (the run's
config.json, the spec, the config in OSS), and its URLs reach logs and the run registry. So the
client replaces the password with `***` before the config goes anywhere, and hands it to the job
as it hands an `api_key_env` key: an environment variable, here named for the masked URL
(`PAI_DISTIL_URL_PASSWORD_<hash>`). The job puts it back only where it connects (`unmasked`).

    split({"base_url": "http://u:pw@h/v1"})
    # ({"base_url": "http://u:***@h/v1"}, {"PAI_DISTIL_URL_PASSWORD_…": "pw"})
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping

MARK = "***"
PREFIX = "PAI_DISTIL_URL_PASSWORD_"
_USERINFO = re.compile(r"(?<=://)([^/@:\s]*):([^/@\s]+)@")
# a key in a query string (`?api_key=sk-…`): never moved into a variable like a password, refused at
# validation (config.endpoint), and masked wherever a URL is shown, that refusal included
QUERY_SECRET = re.compile(r"(?i)([?&](?:api[_-]?key|key|access[_-]?token|token|secret|password|passwd|sig|signature)=)"
                          r"([^&#\s'\"]+)")


def env_name(masked_url: str) -> str:
    """The variable that carries the password of a masked URL."""
    return PREFIX + hashlib.sha256(masked_url.encode()).hexdigest()[:12].upper()


def mask(text: str) -> str:
    """`text` with the password, and any key in the query string, of every URL in it replaced by MARK."""
    return QUERY_SECRET.sub(lambda m: m.group(1) + MARK, _USERINFO.sub(lambda m: f"{m.group(1)}:{MARK}@", text))


def split(data):
    """(a copy of JSON-like `data` with URL passwords masked, {variable name: password})."""
    found: dict[str, str] = {}

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and (m := _USERINFO.search(node)) and m.group(2) != MARK:
            masked = mask(node)
            found[env_name(masked)] = m.group(2)
            return masked
        return node

    return walk(data), found


def names(data) -> list[str]:
    """The variables that carry the passwords of the masked URLs in `data`."""
    out: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            [walk(v) for v in node.values()]
        elif isinstance(node, list):
            [walk(v) for v in node]
        elif isinstance(node, str) and f":{MARK}@" in node:
            out.append(env_name(node))

    walk(data)
    return sorted(set(out))


def unmasked(url: str, environ: Mapping[str, str] | None = None) -> str:
    """A masked URL with its password back, from the job's environment; any other URL as it is."""
    environ = os.environ if environ is None else environ
    password = environ.get(env_name(url)) if f":{MARK}@" in url else None
    return url.replace(f":{MARK}@", f":{password}@", 1) if password else url
