"""The teacher's stored top-k copied to each node's local disk once, verified, then read from there.

Why: on PAI the teacher-logits artifact sits on an OSS mount, where every read is a network round
trip; the KD collator reads a slice of it for every row of every batch, on every rank. Each node's
local rank 0 copies the shards (one read of the mount per node), checking each against the size
and sha256 the artifact's manifest records, into a folder named for those checksums (a rerun on
the same node reuses it); the node's other ranks wait for it (`build_once`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pai_distil.core.contract import JobError, log

LOCAL_CACHE_ENV = "PAI_DISTIL_LOCAL_CACHE"  # a node-local folder (NVMe) for copies; default the temp dir
COPIED = "COPIED"
BLOCK = 8 << 20
HEADROOM = 1 << 30  # left free on the local disk after the copy


def local_topk(folder: Path, say=log) -> Path:
    """Where to read the top-k shards of artifact `folder` from: a verified copy on this node's local
    disk, or `folder` itself (said so) when it has no manifest to verify against or the disk lacks room."""
    from pai_distil.core.artifacts import read_manifest
    from pai_distil_jobs.train.build_once import build_once
    from pai_distil_jobs.train.teacher_topk import SHARD_GLOB

    folder = Path(folder)
    manifest = read_manifest(folder)
    files = [f for f in (manifest or {}).get("files", []) if fnmatch.fnmatch(f["path"], SHARD_GLOB)]
    if not files:
        say(f"teacher top-k: {folder} has no manifest listing its shards; read in place, unverified")
        return folder
    sums = json.dumps(sorted((f["path"], f["sha256"]) for f in files)).encode()
    root = Path(os.environ.get(LOCAL_CACHE_ENV) or tempfile.gettempdir()) / "pai-distil-topk"
    local = root / hashlib.sha256(sums).hexdigest()[:16]
    size = sum(f["size"] for f in files)
    if not (local / COPIED).exists():
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < size + HEADROOM:
            say(f"teacher top-k: {size / 2**30:.1f} GiB does not fit on {root} ({free / 2**30:.1f} GiB free); read "
                f"in place from {folder} (set {LOCAL_CACHE_ENV} to a larger local disk)")
            return folder
    writer = int(os.environ.get("LOCAL_RANK", "0")) == 0
    build_once(local, lambda tmp: copy_verified(folder, files, tmp), writer=writer, complete=COPIED, say=say,
               what="the local copy of the teacher's top-k")
    say(f"teacher top-k: {len(files)} shards ({size / 2**20:.1f} MiB) read from the local copy {local}")
    return local


def copy_verified(folder: Path, files: list[dict], dest: Path) -> None:
    """Copy manifest entries `files` from `folder` into `dest`, hashing as they stream; a size or
    sha256 that differs from the manifest is one line. Marks `dest` complete last."""
    for f in files:
        h, n = hashlib.sha256(), 0
        with open(folder / f["path"], "rb") as src, open(dest / f["path"], "wb") as out:
            while block := src.read(BLOCK):
                h.update(block)
                out.write(block)
                n += len(block)
        if n != f["size"] or h.hexdigest() != f["sha256"]:
            raise JobError(f"input 'teacher_logits': {f['path']} differs from its manifest ({n} bytes, sha256 "
                           f"{h.hexdigest()[:12]}…; the manifest says {f['size']}, {f['sha256'][:12]}…); the "
                           "artifact is damaged: rerun the teacher-logits stage into a fresh output")
    (dest / COPIED).write_text(json.dumps({"from": str(folder), "files": len(files)}))
