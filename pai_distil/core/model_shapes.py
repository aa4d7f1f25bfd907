"""Model shapes for `pai-distil plan`: the published `config.json` of Qwen models, without weights.

Why ship them: no machine that plans has to reach a model hub, and the plan of `Qwen/Qwen3-8B` is the
same on a laptop as on the node. A model reference resolves to a shape by its checkpoint directory's
own `config.json`, by a hub id whose name is a known shape (`Qwen/Qwen3-8B`, `Qwen/Qwen3-8B-Base`,
`Qwen/Qwen2.5-7B-Instruct`), or by a shape name given on the command line (`--shape qwen3-8b`).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from .errors import UserError
from .presets import PRESETS, is_preset, preset_name

_SUFFIX = re.compile(r"-(base|instruct|chat)$")


def names() -> list[str]:
    """The shipped shapes, smallest family member first."""
    files = [f.name[:-5] for f in resources.files("pai_distil.core").joinpath("shapes").iterdir()
             if f.name.endswith(".json")]
    return sorted(files, key=lambda n: (n.split("-")[0], float(re.sub(r"[^\d.]", "", n.split("-")[1]))))


def shape(name: str) -> dict:
    """The config of a shipped shape; an unknown name is one line listing the known ones."""
    key = name.lower()
    if key not in names():
        raise UserError(f"unknown model shape {name!r}; choose one of {', '.join(names())}, or give a checkpoint "
                        "directory with a config.json")
    return json.loads(resources.files("pai_distil.core").joinpath("shapes", key + ".json").read_text())


def read_config(path: Path) -> dict:
    """A checkpoint's config.json, checked for the fields a plan needs."""
    file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the model config {file}: {e}; give a Hugging Face config.json, or a shape "
                        f"with --shape ({', '.join(names())})") from None
    needed = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in needed if not isinstance(config, dict) or k not in config]
    if missing:
        raise UserError(f"{file} has no {', '.join(missing)}; a plan needs a decoder's config.json (Qwen3, Qwen2), "
                        f"or a shape with --shape ({', '.join(names())})")
    return config


def resolve(model: str) -> tuple[str, dict | None]:
    """(label, config) of a model reference: a checkpoint directory's config, a shipped shape named by a
    hub id, or (label, None) for a preset (the job builds its config, with the preset tokenizer)."""
    if is_preset(model):
        if preset_name(model) not in PRESETS:
            raise UserError(f"unknown preset {model!r}; choose one of {', '.join('preset:' + p for p in PRESETS)}")
        return model, None
    path = Path(model).expanduser()
    if path.exists():
        return str(path), read_config(path)
    key = _SUFFIX.sub("", model.rsplit("/", 1)[-1].lower())
    key = re.sub(r"^deepseek-r1-distill-", "", key)
    key = {"qwen-1.5b": "qwen2.5-1.5b", "qwen-7b": "qwen2.5-7b", "qwen-14b": "qwen2.5-14b",
           "qwen-32b": "qwen2.5-32b"}.get(key, key)  # R1-Distill-Qwen-7B is a Qwen2.5 shape
    if key in names():
        return model, shape(key)
    raise UserError(f"no shape known for {model!r}: pass --shape NAME ({', '.join(names())}) or a checkpoint "
                    "directory with its config.json")
