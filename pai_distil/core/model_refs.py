"""Model references in configs (`student.model`, `models[].model`): a preset, a local checkpoint
directory or a hub id, told apart and checked before anything runs.

Why a content digest of a local directory: the cache key holds the config, and the config holds only
the directory's name. A checkpoint edited in place (a new chat template, retrained weights) would
otherwise be a cache hit, and every stage built on it would hand back stale students and reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from pai_distil.core import hub_ids
from pai_distil.core.presets import PRESETS, is_preset, preset_name

# `org/name` or `name`, as the Hugging Face Hub allows them (letters, digits, `-`, `_`, `.`).
HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_PATHLIKE = ("/", "./", "../", "~", ".\\")
RUN_ID = re.compile(r"^[a-z][a-z-]*-\d{8}-\d{6}-[0-9a-f]{4}$")  # our run ids: slow-thinking-20261127-081502-3fa2
FULL_HASH_BYTES = 16 << 20  # files up to this size (config, tokenizer, template) are hashed whole
EDGE_BYTES = 1 << 20  # of larger ones (weights): size, mtime and the first and last MiB (header and tail)
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a file's JSON header
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model*.bin")  # never training_args.bin
EXAMPLE = ("a preset (preset:tiny), a checkpoint directory, a hub id (Qwen/Qwen3-0.6B) or a ModelScope id "
           "(ms://Qwen/Qwen3-0.6B)")


def check(model: str) -> str:
    """`model` as it should be used: a known preset, an existing checkpoint directory (made absolute, so the
    job finds it whatever its working directory), a plausible hub id, or a ModelScope id (`ms://ORG/NAME`,
    kept as it is: the job resolves it from its ModelScope cache). Raises ValueError (one line)."""
    if hub_ids.is_hub_ref(model):
        if model.startswith("hf://"):
            raise ValueError(f"{model!r}: a Hugging Face model is named without hf:// ({model[5:]!r}); hf:// names "
                             "data sets")
        hub_ids.parse(model, split=False)
        return model
    if is_preset(model):
        if preset_name(model) not in PRESETS:
            raise ValueError(f"unknown preset {model!r}; choose one of {', '.join('preset:' + p for p in PRESETS)}")
        return model
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{model!r} is not a Hugging Face checkpoint directory (it has no config.json); "
                             f"give {EXAMPLE}")
        return str(path.resolve())
    if model.startswith(_PATHLIKE) or (len(path.parts) > 1 and path.parent.is_dir()):  # a path with a typo
        raise ValueError(f"no checkpoint directory at {model!r}; check the path, or give {EXAMPLE}")
    if RUN_ID.match(model):  # shaped like a hub id, but a run of ours: the job would look for it on the hub
        raise ValueError(f"{model!r} is a run id, not a model: give the run's output folder (`pai-distil runs show "
                         f"{model}` prints it), or name the run as a stage input (`input: student` here, and "
                         f"`-i student={model}`)")
    if not HUB_ID.match(model):
        raise ValueError(f"{model!r} is neither a preset, an existing directory nor a hub id; give {EXAMPLE}")
    return model


def check_checkpoint(path: Path) -> None:
    """Raise ValueError (one line) unless `path` holds a loadable Hugging Face checkpoint: a config.json
    object, a tokenizer, and weights whose files are not empty and whose safetensors headers parse.

    Read before any job or server loads it, so a truncated file or an artifact of the wrong stage is
    named here rather than in transformers' or safetensors' traceback. Reads headers only, not weights.
    """
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a Hugging Face checkpoint; give the output folder of a "
                         "training stage (slow-thinking, adaptive-thinking, grpo)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'} is not valid JSON ({e}); restore it from the training run") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path / 'config.json'} names no model_type; restore it from the training run")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json); save the tokenizer "
                         "with the model")
    weights = sorted(f for pattern in WEIGHT_FILES for f in path.glob(pattern))
    if not weights:
        raise ValueError(f"{path} has no weights (*.safetensors); the training run may not have finished")
    for f in weights:
        problem = "is empty" if f.stat().st_size == 0 else _safetensors_problem(f) if f.suffix == ".safetensors" else None
        if problem:
            raise ValueError(f"weights file {f} {problem}; the checkpoint is damaged, copy or train it again")


def _safetensors_problem(f: Path) -> str | None:
    """What is wrong with a safetensors file's header (8-byte length, then a JSON object), or None."""
    with open(f, "rb") as fh:
        size = int.from_bytes(fh.read(8).ljust(8, b"\0"), "little")
        if not 0 < size <= min(f.stat().st_size - 8, MAX_HEADER_BYTES):
            return "has a header length beyond its end or its format's limit (truncated?)"
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, ValueError):
            return "has a header that is not JSON (corrupt)"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object (corrupt)"
    ends = [t["data_offsets"][-1] for t in header.values()
            if isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and t["data_offsets"]
            and isinstance(t["data_offsets"][-1], int)]
    if ends and 8 + size + max(ends) != f.stat().st_size:  # the header's tensors must end where the file does
        return f"holds {f.stat().st_size - 8 - size} bytes of tensor data where its header names {max(ends)} (truncated?)"
    return None


def is_local(model: str) -> bool:
    """A checkpoint directory as `check` leaves it (absolute; endpoint model names never are)."""
    return Path(model).is_absolute() and Path(model).is_dir()


def digest(path: str | Path) -> str:
    """Content digest of a checkpoint directory, in well under a second for an 8B checkpoint: small files
    hashed whole; weights by size, modification time and their first and last MiB."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0".encode())
        with open(f, "rb") as fh:
            if st.st_size <= FULL_HASH_BYTES:
                h.update(fh.read())
                continue
            h.update(f"{st.st_mtime_ns}\0".encode())
            h.update(fh.read(EDGE_BYTES))
            fh.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(fh.read(EDGE_BYTES))
    return h.hexdigest()


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)  # .git, .cache: not part of the checkpoint


def local_digests(config: dict) -> dict[str, str]:
    """{json path of a `model` field: digest} for every local checkpoint directory a config names."""
    found: dict[str, str] = {}

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "model" and isinstance(v, str) and is_local(v):
                    found[f"{where}{k}"] = digest(v)
                else:
                    walk(v, f"{where}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}{i}.")

    walk(config, "")
    return found

