"""Readers for reasoning data: files, rows and formats (the problem and CoT readers build on these).

Files are JSONL, JSON (a list of rows), Parquet or CSV. Each row is turned into this project's
problem row (docs/architecture.md: `id, problem, answer, domain, meta`, plus `choices`, `tests`, `source`,
`verifier` where they apply) or CoT sample (`id, problem, answer, thought, solution, teacher,
correct, rv, cd`). Field names are looked up among the usual ones of the format, or taken from
the config (`fields`). Anything missing is reported as one line naming the file, the row number
and the field. Client-safe: no torch; pyarrow is imported for Parquet files only.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from pai_distil.core.config import FieldNames

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
LETTERS = "ABCDEFGHIJ"
PROBLEM_KEYS = {"id", "problem", "answer", "domain", "meta", "verifier", "choices", "tests", "source", "fn_name"}

# The usual names of each field, most specific first; the config's `fields` replaces a list.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("id", "unique_id", "problem_id", "question_id", "task_id", "record id", "idx", "index"),
    "problem": ("problem", "question", "question_content", "prompt", "instruction", "input", "description"),
    "answer": ("answer", "expected_answer", "final_answer", "ground_truth", "gt", "target", "correct answer",
               "answerkey", "label"),
    "choices": ("choices", "options"),
    "tests": ("tests", "test_cases", "public_test_cases", "input_output"),
    "level": ("level", "difficulty"),
    "source": ("source",),
    "domain": ("domain",),
    "thought": ("thought", "reasoning_content", "deepseek_reasoning", "reasoning"),
    "solution": ("solution", "deepseek_solution", "response", "output"),
    "rv": ("rv", "reasoning_verbosity"),
    "cd": ("cd", "cognitive_difficulty"),
    "subject": ("subject", "type", "subdomain", "category"),
}
FORMAT_VERIFIER = {"problems": "synthetic", "math": "math", "multiple_choice": "multiple_choice",
                   "gpqa": "multiple_choice", "code": "code", "messages": "math", "cots": "math"}


class DataError(ValueError):
    """A data file that cannot be read as asked: one line with the file, the row and the field."""


# -- files --------------------------------------------------------------------------------------


# Files of an artifact directory that are never data: its manifest, summaries, logs.
NOT_DATA = {"manifest.json", "summary.json", "report.json", "metrics.jsonl", "predictions.jsonl"}


def data_files(path: Path, prefer: tuple[str, ...] = ("problems.jsonl",)) -> list[Path]:
    """The files of an input: the file itself; in a directory, the first of `prefer` it holds, else
    all its data files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        return [path]
    for name in prefer:
        if (path / name).is_file():
            return [path / name]
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                   and p.name not in NOT_DATA)
    if not found:
        raise DataError(f"{path} is a directory without data files ({', '.join(SUFFIXES)}); "
                        "pass a file or a directory holding them")
    return found


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(row number, row) of a JSONL, JSON, Parquet or CSV file; row numbers count from 1 (JSONL: lines)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = list(_jsonl(path))
        elif suffix == ".json":
            rows = list(enumerate(_json_rows(path), 1))
        elif suffix == ".parquet":
            rows = list(enumerate(_parquet_rows(path), 1))
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(enumerate(csv.DictReader(f), 1))
        else:
            raise DataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path} row {n} is not an object with fields (got {type(row).__name__})")
    return rows


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path} row {n} is not UTF-8 text (a binary file?); "
                                "give a JSONL file, one JSON object per line") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path} row {n} is not JSON ({e.msg}); fix or remove that line") from None


def _json_rows(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("data", "rows", "examples", "problems") if isinstance(data.get(k), list)), data)
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of rows (or {{\"data\": [...]}}), got {type(data).__name__}")
    return data


def _parquet_rows(path: Path) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0][:150]})") from None


# -- fields -------------------------------------------------------------------------------------


class Row:
    """One record with field lookup by the config's name or the usual names (case-insensitive)."""

    def __init__(self, path: Path, n: int, data: dict, fields: FieldNames, fmt: str):
        self.path, self.n, self.data, self.fields, self.fmt = path, n, data, fields, fmt
        self._lower = {str(k).lower(): k for k in data}

    def where(self) -> str:
        return f"{self.path} row {self.n}"

    def key(self, field: str, candidates: tuple[str, ...] | None = None) -> str | None:
        explicit = getattr(self.fields, field, None)
        if explicit is not None:
            return explicit if explicit in self.data else None
        for name in candidates or CANDIDATES.get(field, (field,)):
            if name.lower() in self._lower:
                return self._lower[name.lower()]
        return None

    def get(self, field: str, candidates: tuple[str, ...] | None = None, default=None):
        k = self.key(field, candidates)
        value = self.data.get(k) if k is not None else None
        return default if value is None or value == "" else value

    def need(self, field: str, candidates: tuple[str, ...] | None = None):
        value = self.get(field, candidates)
        if value is None:
            explicit = getattr(self.fields, field, None)
            names = (explicit,) if explicit else candidates or CANDIDATES.get(field, (field,))
            looked = f" (looked for: {', '.join(names)})" if len(names) > 1 else ""
            hint = (f"; name its column with data.fields.{field}"
                    if field in FieldNames.model_fields and not explicit else "")
            raise DataError(f"{self.where()} lacks field '{names[0]}'{looked}{hint}")
        return value


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _decoded(row: Row, raw, field: str, what: str):
    """A structured field as published: the value itself, or a JSON string of it (CSV, Parquet)."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise DataError(f"{row.where()} field '{field}' is not {what}") from None


def _level(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        v = value.strip().removeprefix("Level ").strip()
        return int(v) if v.isdigit() else v
    if isinstance(value, dict):  # OmniThought: {"level": 5, "judge": ...}
        return _level(value.get("level"))
    return value


# -- format detection ---------------------------------------------------------------------------


def detect(keys: set[str], path: Path) -> str:
    """The format a row's field names suggest (first row of a file)."""
    k = {str(x).lower() for x in keys}
    if k & {"messages", "conversations"} or {"instruction", "output"} <= k:  # OpenAI, ShareGPT, Alpaca chat rows
        return "messages"
    if "question" in k and "correct answer" in k:
        return "gpqa"
    if {"thought", "solution"} <= k or ({"reasoning", "question"} <= k and "answer" not in k):  # OmniThought
        return "cots"
    if k & {"tests", "test_cases", "public_test_cases", "input_output"}:
        return "code"
    if k & {"choices", "options"}:
        return "multiple_choice"
    if {"id", "problem"} <= k and k <= PROBLEM_KEYS:
        return "problems"
    if k & {"problem", "question", "prompt"} and k & {"answer", "expected_answer", "final_answer"}:
        return "math"
    raise DataError(f"{path}: cannot tell the format from the fields of its first row ({', '.join(sorted(keys))}); "
                    "set data.format (problems, math, multiple_choice, gpqa, code, messages (chat rows: OpenAI, "
                    "ShareGPT, Alpaca), cots)")

