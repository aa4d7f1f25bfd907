"""Validation problems as a user reads them: every problem one per line with the field, the bad value
and the fix; the nearest known field for an unknown one; a YAML error with its line and column."""

from __future__ import annotations

import json
from types import UnionType
from typing import Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .. import url_credentials
from ..suggest import nearest

MAX_SHOWN = 10  # problems listed at once; past this a config is likely the wrong file or stage


def located(e: yaml.MarkedYAMLError) -> str:
    """A YAML error as `line L, column C: problem (context from line L')`: PyYAML's own text puts the
    position on a later line of its message, which a one-line error would drop."""
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = ""
    if e.context and e.context_mark and e.context_mark.line != getattr(mark, "line", None):
        context = f" ({e.context} at line {e.context_mark.line + 1})"
    return f"{where}{e.problem or e.context}{context}"


def explain(err: ValidationError, where: str, model: type[BaseModel] | None = None, most: int = MAX_SHOWN) -> str:
    """Every validation problem, one per line (field, bad value, fix), at most `most` of them: a user fixes
    them all in one edit rather than one per run. `model` (the one validated) names the nearest known
    field for an unknown one."""
    problems = [_problem(e, model) for e in err.errors()]
    first = f"{where}: {problems[0]}"
    extra = len(problems) - 1
    if not extra:
        return first
    if most <= 1:
        return f"{first} (and {extra} more problem{'s' if extra > 1 else ''})"
    lines = [f"{first} (and {extra} more below)", *(f"  {p}" for p in problems[1:most])]
    if len(problems) > most:
        lines.append(f"  ... {len(problems) - most} more")
    return "\n".join(lines)


def _problem(e: dict, model: type[BaseModel] | None) -> str:
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"field '{loc}' is required; add it"
    if e["type"] == "extra_forbidden":
        known = known_fields(model, e["loc"][:-1]) if model else []
        if e["loc"][-1] in known:  # an alias (save_steps) beside its field (checkpoint_every)
            return f"field '{loc}' is another name of a field given too; keep one of them"
        close = nearest(str(e["loc"][-1]), known)
        if close:
            return f"unknown field '{loc}'; did you mean '{'.'.join([*map(str, e['loc'][:-1]), close])}'?"
        return f"unknown field '{loc}'; remove it or check its spelling (`pai-distil schema` lists the fields)"
    value = e.get("input")
    shown = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    if loc.endswith("api_key_env"):  # a key given where its variable's name belongs: not shown again
        shown = "(hidden)"
    shown, msg = url_credentials.mask(shown), url_credentials.mask(msg)
    if isinstance(value, (dict, list)):  # a check across fields (a model validator): the message names them
        return f"field '{loc}': {msg}"
    return f"field '{loc}' = {shown} is invalid: {msg}"


def known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names (and aliases) a user may write at `loc` inside `model`; [] where it is no model."""
    node = model
    for part in loc:
        node = _step(node, part)
        if node is None:
            return []
    models = _models_in(node)
    if not models:
        return []
    names = []
    for name, field in models[0].model_fields.items():
        names.append(name)
        alias = field.validation_alias
        names += [a for a in getattr(alias, "choices", [alias]) if isinstance(a, str)]
    return names


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, UnionType):
        return [m for a in get_args(annotation) for m in _models_in(a)]
    return []


def _step(annotation, part):
    """The annotation one step down `part` of a validation error's location: a field, an index or key, or
    a union member's tag (pydantic puts the tag in the location)."""
    if get_origin(annotation) in (Union, UnionType):
        found = (_step(a, part) for a in get_args(annotation) if a is not type(None))
        return next((f for f in found if f is not None), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(part, str) and part in annotation.model_fields:
            return annotation.model_fields[part].annotation
        return annotation if part == annotation.__name__ else None
    if get_origin(annotation) in (list, tuple, dict) and get_args(annotation):
        return get_args(annotation)[-1]
    return None
