"""Command-line overrides: `train.learning_rate=1e-5 student.model=Qwen/Qwen3-1.7B` after a command's options.

Why OmegaConf's dotlist rather than our own parser: it is what LLaMA-Factory and Hydra users already
type, and it reads each value as YAML does in a config file (`1e-5` a float, `true` a bool, `[a, b]` a
list, `null` nothing), so an override is validated exactly like the same value written in the file.
The overrides are merged into the plain data before validation; the merged config is what runs and
what the cache key covers. `submit`, `run` (scoped by stage id) and `deploy eas --set` use this one parser.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import UserError

EXAMPLE = "train.learning_rate=1e-5"


def parse(pairs: tuple[str, ...] | list[str], what: str = "override") -> list[tuple[list[str], Any]]:
    """Each `KEY.PATH=VALUE` as (its keys, its value typed as YAML types it); a malformed one is a UserError.
    `a.0.b` and `a[0].b` both name item 0 of the list `a`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    parsed = []
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        keys = key.strip().replace("[", ".").replace("]", "").split(".")
        if not sep or not all(keys):
            raise UserError(f"{what} {pair!r} must look like KEY.PATH=VALUE, e.g. {EXAMPLE}")
        try:
            value: Any = OmegaConf.to_container(OmegaConf.from_dotlist([pair]), resolve=False)
        except (OmegaConfBaseException, YAMLError) as e:  # the value is no YAML (`[1,`), or the key no path
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{what} {pair!r}: the value is not valid YAML ({first}); quote text, "
                            "e.g. 'key=\"a: b\"'") from None
        for k in keys:
            value = value[k]
        parsed.append((keys, value))
    return parsed


def apply(data: dict, pairs: tuple[str, ...] | list[str], what: str = "override") -> dict:
    """A copy of `data` with every override set, missing mappings made on the way (`teacher.base_url=...`
    with no `teacher:` in the file). Later overrides win over earlier ones, as in a file read top down."""
    out = copy.deepcopy(data)
    for keys, value in parse(pairs, what):
        set_path(out, keys, value, f"{what} {'.'.join(keys)}")
    return out


def set_path(node: dict | list, keys: list[str], value: Any, where: str) -> None:
    """Set `value` at `keys` in `node`: a key of a mapping, or an index of an existing list item."""
    for k in keys[:-1]:
        slot = _index(node, k, where) if isinstance(node, list) else k
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if not isinstance(child, (dict, list)):
            child = {}
            node[slot] = child  # `lora: null` in the file, `train.lora.r=8` here: the override makes the mapping
        node = child
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, where)] = value
    else:
        node[last] = value


def _index(node: list, key: str, where: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise UserError(f"{where}: {key!r} is not an index of a list of {len(node)} item(s); use 0 to "
                        f"{len(node) - 1}" if node else f"{where}: {key!r} indexes an empty list")
    return int(key)
