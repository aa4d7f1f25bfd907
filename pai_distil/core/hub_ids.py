"""Data sets and models named by hub id: `hf://ORG/NAME[/CONFIG][@REVISION][:SPLIT]` (Hugging Face Hub,
read through `datasets`) and `ms://ORG/NAME[@REVISION][:SPLIT]` (ModelScope, read through its hub client).

Why `modelscope_hub` rather than `modelscope`: `modelscope.hub.snapshot_download` is a shim over it,
and `import modelscope` imports torch, which the client never does. The ModelScope cache is the
library's own (`MODELSCOPE_CACHE`, default ~/.cache/modelscope): a snapshot found there is used as it
is, without asking the hub; only a missing one is downloaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("hf://", "ms://")
_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:/(?P<config>[\w.-]+))?"
                  r"(?:@(?P<revision>[\w.-]+))?(?::(?P<split>[\w.-]+))?$")
FORMS = {"hf://": "hf://ORG/NAME[/CONFIG][@REVISION][:SPLIT], e.g. hf://openai/gsm8k/main:test",
         "ms://": "ms://ORG/NAME[@REVISION][:SPLIT], e.g. ms://modelscope/gsm8k:test"}


@dataclass(frozen=True)
class HubRef:
    """One parsed hub id."""

    scheme: str  # "hf://" or "ms://"
    repo: str  # ORG/NAME
    config: str | None = None
    revision: str | None = None
    split: str | None = None

    @property
    def name(self) -> str:
        return self.repo.split("/")[1]

    def __str__(self) -> str:
        return (f"{self.scheme}{self.repo}{'/' + self.config if self.config else ''}"
                f"{'@' + self.revision if self.revision else ''}{':' + self.split if self.split else ''}")


def is_hub_ref(value: str) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def parse(value: str, split: bool = True) -> HubRef:
    """The parts of `value`; ValueError (one line, with the form) when it is malformed. Models take no split."""
    scheme = next(s for s in SCHEMES if value.startswith(s))
    m = _REF.match(value[len(scheme):])
    form = FORMS[scheme] if split else f"{scheme}ORG/NAME[@REVISION], e.g. {scheme}Qwen/Qwen3-0.6B"
    if m is None or ".." in m["repo"] or (m["config"] and scheme == "ms://") or (m["split"] and not split):
        raise ValueError(f"{value!r} is not a hub id of the form {form}")
    return HubRef(scheme, m["repo"], m["config"], m["revision"], m["split"])


def modelscope_cache() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope").expanduser()


def modelscope_snapshot(ref: HubRef, repo_type: str) -> Path:
    """The local folder of a ModelScope model or dataset: its snapshot in the ModelScope cache, else
    downloaded into it. ValueError (one line) when it is neither cached nor downloadable."""
    try:
        from modelscope_hub.compat.snapshot_download import snapshot_download
        from modelscope_hub.errors import CacheNotFound
    except ImportError:
        raise ValueError(f"{ref} is read with the ModelScope hub client, which is not installed here; "
                         "pip install modelscope-hub (or pai-distil[train])") from None
    kw = {"repo_id": ref.repo, "repo_type": repo_type, "revision": ref.revision}
    try:
        return Path(snapshot_download(**kw, local_files_only=True))
    except CacheNotFound:
        pass
    try:
        return Path(snapshot_download(**kw))
    except Exception as e:  # noqa: BLE001 - no connection, no such repo, no access: many types, one answer
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{ref} is not in the ModelScope cache ({modelscope_cache()}) and cannot be downloaded "
                         f"({reason}); download it where the hub is reachable (modelscope download --{repo_type} "
                         f"{ref.repo}) and set MODELSCOPE_CACHE to that cache") from None
