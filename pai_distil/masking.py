"""Secrets hidden in what is printed: found where they are, and by value only when long enough.

Why not replace every occurrence of a secret's value: a short value (an AccessKey id `x` in a
test setup) would turn `PyTorchJob` into `P***TorchJob`. A secret is masked first where it
lives: a field named for it (`token`, an env name such as `TEACHER_KEY`) or an env entry
`{"name": NAME, "value": ...}`. Its value is searched for in free text only when it is at least
`MIN_SECRET_LEN` characters, as real keys and tokens are.
"""

from __future__ import annotations

from collections.abc import Iterable

MIN_SECRET_LEN = 8


def masked(data, *, names: Iterable[str] = (), values: Iterable[str | None] = (), mark: str = "***"):
    """A copy of `data` (JSON-like) with secrets replaced by `mark`.

    Args:
        names (iterable of str, optional): keys whose values are secrets (fields, env names).
        values (iterable of str, optional): secret values, replaced wherever they appear when long enough.
        mark (str, optional): what a secret becomes. Defaults to "***".

    Example: `masked({"Envs": {"KEY": "x"}, "JobType": "PyTorchJob"}, names=["KEY"], values=["x"])`
    is `{"Envs": {"KEY": "***"}, "JobType": "PyTorchJob"}`.
    """
    names = set(names)
    long_values = sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)

    def walk(node):
        if isinstance(node, dict):
            entry = node.get("name") in names  # {"name": NAME, "value": ...}: an env entry of a secret
            return {k: mark if v and (k in names or (entry and k == "value")) else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            for v in long_values:
                node = node.replace(v, mark)
        return node

    return walk(data)
