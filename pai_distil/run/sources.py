"""Stage inputs named by hub id (`-i problems=hf://openai/gsm8k/main:test`, `ms://ORG/NAME:train`),
turned into one JSONL file on this machine before anything runs.

Why a file here rather than a download in the job: every backend's job reads files, and the cache
key is the content digest of its inputs. The data set written once under the pai-distil home (named
by the dataset's fingerprint: `datasets`' for the Hub, the snapshot files' for ModelScope) is read by
the same readers as a user's own file, hashed into the cache key like it, and uploaded to OSS like it
on `--backend pai`, so a PAI node needs no hub access.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pai_distil import paths
from pai_distil.core import hub_ids
from pai_distil.core.readers import NOT_DATA, SUFFIXES, DataError, read_records

# Files of a ModelScope dataset repo that describe it rather than hold rows.
REPO_FILES = {"configuration.json", "dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"}


def materialise(value: str) -> Path:
    """The JSONL file of the data set `value` names; ValueError (one line) when it cannot be had."""
    ref = hub_ids.parse(value)
    return _from_hf(ref) if ref.scheme == "hf://" else _from_modelscope(ref)


def _from_hf(ref: hub_ids.HubRef) -> Path:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{ref} is read with the datasets package, which is not installed here; pip install "
                         "datasets (or pai-distil[train])") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        loaded = datasets.load_dataset(ref.repo, ref.config, revision=ref.revision, split=ref.split)
    except Exception as e:  # noqa: BLE001 - not cached offline, no such config or split, no access: many types
        raise ValueError(f"{ref} cannot be read ({_first_line(e)}); check the id, config and split, or load it "
                         "once where the hub is reachable (HF_DATASETS_CACHE keeps it)") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[_split(ref, list(loaded))]
    target = _target(ref, loaded._fingerprint)
    if not target.is_file():
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        loaded.to_json(str(tmp), lines=True, force_ascii=False)
        os.replace(tmp, target)
    return target


def _from_modelscope(ref: hub_ids.HubRef) -> Path:
    snapshot = hub_ids.modelscope_snapshot(ref, "dataset")
    files = [f for f in sorted(snapshot.rglob("*")) if f.is_file() and f.suffix.lower() in SUFFIXES
             and f.name not in NOT_DATA | REPO_FILES and not any(p.startswith(".") for p in f.relative_to(snapshot).parts)]
    if not files:
        raise ValueError(f"{ref}: the snapshot at {snapshot} holds no data files ({', '.join(SUFFIXES)})")
    by_split = {f: _split_of(f.relative_to(snapshot)) for f in files}
    splits = sorted({s for s in by_split.values() if s})
    if ref.split or splits:
        chosen = _split(ref, splits)
        files = [f for f in files if by_split[f] == chosen]
    target = _target(ref, _files_digest(files))
    if not target.is_file():
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                for f in files:
                    for _, row in read_records(f):
                        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        except DataError as e:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{ref}: {e}") from None
        os.replace(tmp, target)
    return target


def _split(ref: hub_ids.HubRef, splits: list[str]) -> str:
    """The split asked for; without one, the only split or `train`."""
    if ref.split is not None:
        if ref.split not in splits:
            raise ValueError(f"{ref} has no split {ref.split!r}; its splits: {', '.join(splits) or 'none'}")
        return ref.split
    if len(splits) == 1 or "train" in splits:
        return splits[0] if len(splits) == 1 else "train"
    raise ValueError(f"{ref} has the splits {', '.join(splits)}; name one, e.g. {ref}:{splits[0]}")


def _split_of(rel: Path) -> str | None:
    """The split a data file belongs to by its name, as the hubs lay them out: `train.jsonl`,
    `data/test-00000-of-00001.parquet`, `validation/part.csv`; None when its name shows none."""
    for part in (rel.stem, *rel.parts[:-1]):
        for split in ("train", "test", "validation", "valid", "dev"):
            if part == split or part.startswith((f"{split}-", f"{split}_", f"{split}.")):
                return split
    return None


def _files_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _target(ref: hub_ids.HubRef, fingerprint: str) -> Path:
    """Where a data set's rows go: one folder per id and fingerprint, the file named for the data set
    (its rows' default source and id prefix)."""
    label = "-".join(p for p in (ref.config, ref.revision, ref.split) if p) or "default"
    folder = paths.home() / "sources" / ref.scheme[:2] / ref.repo / f"{label}-{fingerprint}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{ref.name}.jsonl"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
