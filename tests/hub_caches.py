"""Small data sets and models laid out in the hubs' own local caches, as a download leaves them, so
`hf://` and `ms://` ids resolve offline: `datasets`' prepared cache (HF_DATASETS_CACHE) and
ModelScope's snapshot cache (MODELSCOPE_CACHE)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def hf_dataset(cache: Path, repo: str, config: str, splits: dict[str, list[dict]]) -> Path:
    """`repo` (ORG/NAME) with one config, prepared by `datasets` into its cache folder
    `ORG___NAME/CONFIG/0.0.0/HASH` as `load_dataset` leaves it after a download."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, rows in splits.items():
            files[split] = str(Path(tmp) / f"{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
        builder = Json(cache_dir=str(Path(tmp) / "built"), dataset_name=name, config_name=config, config_id=config,
                       data_files=files, hash="0" * 16)
        builder.download_and_prepare()
        target = Path(cache) / f"{org}___{name}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(Path(tmp) / "built" / name, target)
    return target


def env_hf(cache: Path) -> dict[str, str]:
    """The environment of a machine with no hub access and that cache."""
    return {"HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def modelscope_repo(cache: Path, repo: str, repo_type: str, files: dict[str, str | bytes | Path],
                    revision: str = "master") -> Path:
    """A ModelScope snapshot as its hub client caches it: `{type}s/ORG--NAME/snapshots/REVISION/...`.
    A Path value is a folder copied whole (a checkpoint)."""
    snap = Path(cache) / f"{repo_type}s" / repo.replace("/", "--") / "snapshots" / revision
    for rel, content in files.items():
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copytree(content, target, dirs_exist_ok=True)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return snap
