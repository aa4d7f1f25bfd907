"""What every config model shares: strict models, one-line validation errors, YAML and JSON files read
with repeated keys refused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from ..errors import UserError
from .problems import explain, located


MAX_INT = 2**53  # above any count or seed a config holds; `max_steps: 1e29` is a typo, not a plan


# What YAML 1.1 (PyYAML) leaves a string although it is a float: an exponent without a dot (`1e-5`).
_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")
_NUMBERS = (int, float)


def _number_kinds(annotation) -> tuple[type, ...] | None:
    """(int,) / (float,) / (int, float) when a field holds only numbers (and maybe None), else None."""
    if annotation in _NUMBERS:
        return (annotation,)
    if get_origin(annotation) in (Union, UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        return tuple(kinds) if kinds and all(k in _NUMBERS for k in kinds) else None
    return None


def coerced_number(value, annotation) -> str | None:
    """Why `value` must not become the number or boolean `annotation` asks for (a bool, a quoted number,
    `"no"` or `1` for a boolean), or None.

    Pydantic's lax mode reads `true` as 1 and `"5"` as 5: a `seed: true` or `max_steps: "5"` is a
    mistake to name, not to guess. A float field still takes `1e-5`, which YAML 1.1 reads as a string.
    Lists of numbers (`levels: [1, 2]`) are checked item by item.
    """
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)):
        item = (get_args(annotation) or (None,))[0]
        return next((why for v in value if (why := coerced_number(v, item))), None)
    if annotation in (bool, bool | None, Union[bool, None]) and not isinstance(value, bool) and value is not None:
        return f"{json.dumps(value)} is not a boolean; write true or false, unquoted"
    kinds = _number_kinds(annotation)
    if kinds is None or not isinstance(value, (bool, str)):
        return None
    if isinstance(value, str) and float in kinds and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return None
    return f"{json.dumps(value)} is not a number; write it unquoted, e.g. {'1e-5' if float in kinds else '5'}"


class Strict(BaseModel):
    """Unknown fields, non-finite numbers (`.inf`, `.nan`), absurd integers, and booleans or quoted
    numbers where a number belongs are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coerced_number(cls, v, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name or "")
        why = coerced_number(v, field.annotation) if field is not None else None
        if why:
            raise ValueError(why)
        return v


    @field_validator("*")
    @classmethod
    def _sane_integer(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            raise ValueError(f"{v:.3g} is beyond any count this tool uses (at most 2**53); check the number")
        return v


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently), so a
    repeated stage id or setting is reported with its line instead of quietly overriding the first."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; "
                                "keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unique_json_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"key {k!r} appears twice in one object")
    return dict(pairs)


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON file as a mapping, with one-line errors (bad syntax, bytes or repeated keys)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {str(p)!r} does not exist; check the path")
    is_yaml = p.suffix in (".yaml", ".yml")
    try:
        text = p.read_bytes().decode("utf-8")
        data = yaml.load(text, _UniqueKeyLoader) if is_yaml else json.loads(text, object_pairs_hook=_unique_json_keys)
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except RecursionError:  # the parsers recurse once per level: thousands of levels are an attack, not a config
        raise UserError(f"{what} file {str(p)!r} nests too deeply to read; a config nests a few levels") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: JSON syntax, or a repeated key
        first = str(e).strip().splitlines()[0]
        if isinstance(e, ValueError) and "appears twice" in first:  # JSON is YAML: its loader finds the line
            try:
                yaml.load(text, _UniqueKeyLoader)
            except yaml.YAMLError as with_line:
                e = with_line
        if isinstance(e, yaml.MarkedYAMLError):
            first = located(e)
        raise UserError(f"{what} file {str(p)!r} is not valid {'YAML' if is_yaml else 'JSON'}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{what} file {str(p)!r} must hold a mapping of fields, got {type(data).__name__}")
    return data


def validate(model: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(explain(err, where, model)) from None
