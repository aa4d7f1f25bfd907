"""Problem sets for stages: drawn from the synthetic world or read from the `problems` input."""

from __future__ import annotations

import json
from pathlib import Path

from pai_distil.core import readers as datasets
from pai_distil.core.config import ProblemData, SyntheticProblems
from pai_distil.core import world

from pai_distil.core.contract import JobError


def read_jsonl(path: Path) -> list[dict]:
    """JSON objects, one per non-empty line; a bad line is reported with its number."""
    return [row for _, row in numbered_jsonl(path)]


def numbered_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, JSON object) for every non-empty line, so a row's later error can name its line."""
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise JobError(f"{path} row {n} is not UTF-8 text (a binary file?); "
                               "give a JSONL file, one JSON object per line") from None
            except json.JSONDecodeError as e:
                raise JobError(f"{path} row {n} is not JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise JobError(f"{path} row {n} is not a JSON object")
            rows.append((n, row))
    return rows


def read_problem_rows(path: Path, data: ProblemData | None = None) -> list[dict]:
    """Problem rows of a file or directory in any supported shape (pai_distil.core.readers)."""
    try:
        return datasets.read_problems(path, data)
    except datasets.DataError as e:
        raise JobError(f"input 'problems': {e}") from None


def load_problems(synthetic: SyntheticProblems | None, path: Path | None, prefix: str = "p",
                  data: ProblemData | None = None) -> list[dict]:
    """Problem rows from the synthetic world (config) or from the `problems` input: a file (JSONL, JSON,
    Parquet, CSV) or a directory (its problems.jsonl, else every data file in it, one source each)."""
    if synthetic is not None:
        return [p.to_row() for p in world.generate_problems(synthetic.n, synthetic.seed, synthetic.levels, prefix)]
    if path is None:
        raise JobError("no problems: set `problems` in the config or pass --input problems=FILE")
    return read_problem_rows(path, data)


def level_of(row: dict) -> str:
    meta = row.get("meta") or {}
    level = meta.get("level", row.get("level"))
    return "all" if level is None else str(level)


def source_of(row: dict) -> str:
    return str(row.get("source") or (row.get("domain") or world.DOMAIN))
