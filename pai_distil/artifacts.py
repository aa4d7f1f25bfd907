"""Artifacts: directories described by `manifest.json` (every file, its size and sha256).

The manifest is written last and atomically, so its presence marks an artifact complete; a
job killed half-way leaves files but no manifest, and nothing treats them as a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"
REWARD_HEAD = "reward_head.safetensors"  # marks a reward model checkpoint (beside the language model's files)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable(paths: list[Path]) -> None:
    """Give files written through a private temp file (safetensors does: mode 0600) the mode a
    plain write would have, so a serving container running as another user can read them."""
    mode = 0o666 & ~_umask()
    for p in paths:
        if p.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            p.chmod(mode)


def write_manifest(root: str | Path, **meta) -> dict:
    root = Path(root)
    _readable(_files(root))
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _files(root)]
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta, "files": files}
    tmp = root / f".tmp-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(root: str | Path) -> dict | None:
    p = Path(root) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def is_complete(root: str | Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def verify(root: str | Path) -> None:
    """Raise UserError unless every file of the manifest is present with its size and checksum."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise UserError(f"{root} is not a complete artifact (no {MANIFEST}); rerun the stage that makes it")
    for f in manifest["files"]:
        p = root / f["path"]
        if not p.is_file() or p.stat().st_size != f["size"] or sha256_file(p) != f["sha256"]:
            raise UserError(f"artifact {root}: file {f['path']} is missing or changed since it was written; rerun the stage")


def digest(path: str | Path) -> str:
    """Content digest of an input: a file's sha256, or the hash of an artifact's file list."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    manifest = read_manifest(p)
    if manifest is not None:
        body = json.dumps([(f["path"], f["sha256"]) for f in manifest["files"]])
        return hashlib.sha256(body.encode()).hexdigest()
    body = json.dumps([(f.relative_to(p).as_posix(), sha256_file(f)) for f in _files(p)])
    return hashlib.sha256(body.encode()).hexdigest()
