"""Problem sets for stages: drawn from the synthetic world or read from a JSONL input."""

from __future__ import annotations

import json
from pathlib import Path

from pai_distil.specs import SyntheticProblems
from pai_distil.synthetic import world

from ..contract import JobError

REQUIRED = ("id", "problem", "answer")


def read_jsonl(path: Path) -> list[dict]:
    """JSON objects, one per non-empty line; a bad line is reported with its number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JobError(f"{path} row {n} is not JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise JobError(f"{path} row {n} is not a JSON object")
            rows.append(row)
    return rows


def read_problem_rows(path: Path) -> list[dict]:
    """Problems in the DESIGN.md format; missing fields and repeated ids name the row."""
    rows, seen = [], set()
    for n, row in enumerate(read_jsonl(path), 1):
        for field in REQUIRED:
            if row.get(field) in (None, ""):
                raise JobError(f"problems file {path} row {n} lacks field '{field}'; each row needs {', '.join(REQUIRED)}")
        if str(row["id"]) in seen:
            raise JobError(f"problems file {path} row {n} repeats id {row['id']!r}; ids must be unique")
        seen.add(str(row["id"]))
        rows.append({"id": str(row["id"]), "problem": str(row["problem"]), "answer": str(row["answer"]),
                     "domain": row.get("domain") or world.DOMAIN, "meta": row.get("meta") or {}})
    if not rows:
        raise JobError(f"problems file {path} holds no problems")
    return rows


def load_problems(synthetic: SyntheticProblems | None, path: Path | None, prefix: str = "p") -> list[dict]:
    """Problem rows from the synthetic world (config) or from a JSONL file / a dir holding problems.jsonl."""
    if synthetic is not None:
        return [p.to_row() for p in world.generate_problems(synthetic.n, synthetic.seed, synthetic.levels, prefix)]
    if path is None:
        raise JobError("no problems: set `problems` in the config or pass --input problems=FILE.jsonl")
    if path.is_dir():
        path = path / "problems.jsonl"
        if not path.is_file():
            raise JobError(f"input 'problems' is a directory without problems.jsonl ({path}); "
                           "pass the JSONL file itself or a directory holding problems.jsonl")
    return read_problem_rows(path)


def level_of(row: dict) -> str:
    meta = row.get("meta") or {}
    return str(meta.get("level", row.get("level", "all")))
