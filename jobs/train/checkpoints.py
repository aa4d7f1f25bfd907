"""Checkpoints a run can trust: sealed once whole, with a manifest, and verified before a resume.

A checkpoint is `checkpoint_dir/checkpoint-N/`, written in place by TRL and complete only with its
`COMPLETE` marker, written last. Beside the marker, `checkpoint-manifest.json` lists every file with
its size and a CRC-32. Resume walks the complete checkpoints from the newest down and takes the first
that still matches its manifest; one that does not (a file truncated, overwritten, removed after the
marker was written: a SIGKILL at the wrong moment, a full disk, a hand) is renamed
`rejected-checkpoint-N`, named in one log line, and never loaded; a folder without its marker (a save
that was cut short) is removed.

Why written in place and sealed by a marker rather than staged and renamed: on PAI the checkpoint
folder is an OSS mount (JindoFuse), where renaming a folder copies and deletes every object in it,
about 100 GB for an 8B model with its optimizer state, at every save.

Why sampled blocks for large files rather than a full hash: a real checkpoint holds tens of GB of
weights and optimizer state, often on a network mount, and is written every few hundred steps;
reading it all back at each save and each resume would cost minutes. Files up to `WHOLE_BYTES`
(configs, trainer and RNG state, a small model's weights) are checked whole; a larger one by its
size plus the CRC of its first and last MiB and of `SAMPLES` blocks spread evenly between them.
That catches what interrupted writes leave (a short file, a zeroed header or tail) at a read of
about 18 MiB per file; a few bytes changed between samples of a multi-GB file go unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from pathlib import Path

COMPLETE = "COMPLETE"
MANIFEST = "checkpoint-manifest.json"
PREFIX = "checkpoint-"  # TRL's own folder name: TRL writes each checkpoint where it stays
REJECTED = "rejected-"  # prefix of a checkpoint set aside; not matched by `checkpoint-*`
WHOLE_BYTES = 64 << 20
EDGE_BYTES = 1 << 20
SAMPLES = 256
SAMPLE_BYTES = 64 << 10


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints with their marker, oldest first."""
    done = [p for p in Path(checkpoint_dir).glob(f"{PREFIX}*") if (p / COMPLETE).exists()]
    return sorted(done, key=step_of)


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint with its marker (unverified: see `resumable_checkpoint`)."""
    done = complete_checkpoints(checkpoint_dir)
    return done[-1] if done else None


def seal_checkpoint(checkpoint: Path, step: int, keep: int) -> Path:
    """Mark a checkpoint TRL finished writing complete (its manifest, then `COMPLETE`) and prune the
    oldest complete ones beyond `keep`. Nothing is moved: see the module's docstring."""
    (checkpoint / MANIFEST).write_text(json.dumps(manifest(checkpoint)))
    (checkpoint / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
    for old in complete_checkpoints(checkpoint.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return checkpoint


def remove_unfinished(checkpoint_dir: Path) -> list[str]:
    """Remove the checkpoint folders of saves that never finished (no `COMPLETE`); their names."""
    gone = [p for p in Path(checkpoint_dir).glob(f"{PREFIX}*") if p.is_dir() and not (p / COMPLETE).exists()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in gone]


def manifest(checkpoint: Path) -> dict:
    """{"files": {relative path: {"size", "crc32"}}} of every file in the checkpoint."""
    files = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name not in (MANIFEST, COMPLETE)):
        size = path.stat().st_size
        files[path.relative_to(checkpoint).as_posix()] = {"size": size, "crc32": fingerprint(path, size)}
    return {"files": files}


def fingerprint(path: Path, size: int) -> int:
    """CRC-32 of the whole file up to WHOLE_BYTES, else of its edges and SAMPLES evenly spaced blocks."""
    crc = 0
    with open(path, "rb") as f:
        if size <= WHOLE_BYTES:
            while chunk := f.read(8 << 20):
                crc = zlib.crc32(chunk, crc)
            return crc
        spacing = (size - 2 * EDGE_BYTES - SAMPLE_BYTES) / (SAMPLES - 1)
        spans = [(0, EDGE_BYTES), *((EDGE_BYTES + int(i * spacing), SAMPLE_BYTES) for i in range(SAMPLES)),
                 (size - EDGE_BYTES, EDGE_BYTES)]
        for offset, length in spans:
            f.seek(offset)
            crc = zlib.crc32(f.read(length), crc)
    return crc


def problem(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint against its manifest, or None when it matches (or
    predates manifests)."""
    try:
        listed = json.loads((checkpoint / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None if (checkpoint / COMPLETE).exists() else "no manifest"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest ({type(e).__name__})"
    for name, want in listed.items():
        path = checkpoint / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["size"]:
            return f"{name} has {size} bytes, not {want['size']}"
        if fingerprint(path, size) != want["crc32"]:
            return f"{name} does not match its checksum"
    return None


def resumable_checkpoint(checkpoint_dir: Path, log=print) -> Path | None:
    """The newest complete checkpoint that matches its manifest; each newer one that does not is set
    aside as `rejected-checkpoint-N` and named in one log line. Call on one process only (rank 0)."""
    for ckpt in reversed(complete_checkpoints(checkpoint_dir)):
        why = problem(ckpt)
        if why is None:
            return ckpt
        aside = ckpt.with_name(f"{REJECTED}{ckpt.name}")
        if aside.exists():
            aside = ckpt.with_name(f"{REJECTED}{ckpt.name}-{time.time_ns()}")
        os.replace(ckpt, aside)
        log(f"checkpoint {ckpt.name} set aside as {aside.name}: {why}; trying an older one")
    return None
