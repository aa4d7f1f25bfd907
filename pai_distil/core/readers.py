"""Readers for reasoning data in the shapes it is published in.

Files are JSONL, JSON (a list of rows), Parquet or CSV. Each row is turned into this project's
problem row (DESIGN.md: `id, problem, answer, domain, meta`, plus `choices`, `tests`, `source`,
`verifier` where they apply) or CoT sample (`id, problem, answer, thought, solution, teacher,
correct, rv, cd`). Field names are looked up among the usual ones of the format, or taken from
the config (`fields`). Anything missing is reported as one line naming the file, the row number
and the field. Client-safe: no torch; pyarrow is imported for Parquet files only.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from pai_distil.core.config import DataFile, FieldNames, ProblemData
from pai_distil.core import world

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
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
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
    if k & {"messages", "conversations"}:
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
                    "set data.format (problems, math, multiple_choice, gpqa, code, messages, cots)")


# -- problems -----------------------------------------------------------------------------------


def read_problems(path: Path, spec: ProblemData | None = None) -> list[dict]:
    """Problem rows of a file or directory; ids unique (prefixed by the source for several files)."""
    spec = spec or ProblemData()
    files = data_files(path)
    unknown = set(spec.files) - {f.name for f in files}
    if unknown:
        raise DataError(f"data.files names {', '.join(sorted(unknown))}, not found in {path}")
    rows, seen = [], {}
    for f in files:
        file_spec = _merge(spec, spec.files.get(f.name))
        for row in read_problem_file(f, file_spec):
            if len(files) > 1:
                row["id"] = f"{row['source']}:{row['id']}"
            if row["id"] in seen:
                raise DataError(f"{f} row {row['meta']['row']} repeats id {row['id']!r} "
                                f"(first at row {seen[row['id']]}); ids must be unique")
            seen[row["id"]] = row["meta"]["row"]
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no problems")
    return rows


def _merge(base: ProblemData, override: DataFile | None) -> DataFile:
    if override is None:
        return DataFile(**{k: getattr(base, k) for k in DataFile.model_fields})
    data = {k: getattr(base, k) for k in DataFile.model_fields}
    data.update(override.model_dump(exclude_unset=True))
    if isinstance(data["fields"], dict):
        data["fields"] = FieldNames(**data["fields"])
    return DataFile(**data)


def read_problem_file(path: Path, spec: DataFile) -> list[dict]:
    records = read_records(path)
    if spec.limit:
        records = records[:spec.limit]
    if not records:
        return []
    fmt = spec.format if spec.format != "auto" else detect(set(records[0][1]), path)
    convert = {"problems": _problem_row, "math": _math_row, "multiple_choice": _choice_row, "gpqa": _gpqa_row,
               "code": _code_row, "messages": _messages_row, "cots": _cot_problem_row}[fmt]
    out = []
    for n, data in records:
        row = Row(path, n, data, spec.fields, fmt)
        p = convert(row, spec)
        p["meta"] = {**(p.get("meta") or {}), "row": n, "file": path.name}
        p["id"] = str(p.get("id") or f"{path.stem}-{n}")
        p["source"] = spec.source or str(row.get("source") or path.stem)
        verifier = spec.verifier or p.get("verifier")
        domain = row.get("domain") if fmt != "problems" else p.get("domain")
        p["domain"] = str(domain or p.get("domain") or FORMAT_VERIFIER[fmt])
        if verifier:
            p["verifier"] = verifier
        _check_verifier(row, p)
        out.append(p)
    return out


def _check_verifier(row: Row, p: dict) -> None:
    """The row's verifier exists and the row carries what it needs."""
    from pai_distil.core.verifiers import verifier_for

    try:
        kind = verifier_for(p)
    except ValueError as e:
        raise DataError(f"{row.where()} field 'verifier': {e}") from None
    if kind == "code" and not p.get("tests"):
        raise DataError(f"{row.where()} lacks field 'tests' (code answers are judged by test cases)")
    if kind != "code" and not str(p.get("answer", "")).strip():
        raise DataError(f"{row.where()} lacks field 'answer'")


def _problem_row(row: Row, spec: DataFile) -> dict:
    """This project's own rows (and the synthetic world's)."""
    d = row.data
    out = {"id": row.need("id", ("id",)), "problem": _text(row.need("problem", ("problem",))),
           "answer": "" if d.get("answer") is None else _text(d["answer"]),
           "domain": d.get("domain") or world.DOMAIN, "meta": d.get("meta") or {}}
    for k in ("choices", "tests", "verifier", "fn_name"):
        if d.get(k) is not None:
            out[k] = d[k]
    if out.get("tests") is not None:
        out["tests"] = _tests(row, out["tests"])
    if not out.get("tests") and out["answer"] == "":
        row.need("answer", ("answer",))
    return out


def _math_row(row: Row, spec: DataFile) -> dict:
    """MATH-500 (problem, solution, answer, subject, level, unique_id), AIME (ID, Problem, Answer), GSM8K."""
    answer = _text(row.need("answer"))
    if "####" in answer:  # GSM8K: the reasoning, then "#### 72"
        answer = answer.rsplit("####", 1)[1].strip()
    meta = {k: v for k, v in (("level", _level(row.get("level"))), ("subject", row.get("subject"))) if v is not None}
    return {"id": row.get("id"), "problem": _text(row.need("problem")), "answer": answer, "domain": "math",
            "meta": meta}


def render_choices(question: str, choices: list[str]) -> str:
    """The question with its choices as lettered lines: how the model sees a multiple-choice row."""
    lines = [f"{LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return question.rstrip() + "\n\n" + "\n".join(lines)


def _decoded(row: Row, raw, field: str, what: str):
    """A structured field as published: the value itself, or a JSON string of it (CSV, Parquet)."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise DataError(f"{row.where()} field '{field}' is not {what}") from None


def _choice_row(row: Row, spec: DataFile) -> dict:
    """Question + choices (a list, or {"A": …} / {"label": [...], "text": [...]}) + answer (letter, index or text)."""
    raw = _decoded(row, row.need("choices"), row.key("choices"), "a list of choices")
    if isinstance(raw, dict) and "text" in raw:
        raw = raw["text"]
    elif isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw)]
    if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS):
        raise DataError(f"{row.where()} field '{row.key('choices')}' must list 2 to {len(LETTERS)} choices")
    choices = [_text(c) for c in raw]
    answer = row.need("answer")
    letter = _letter(answer, choices)
    if letter is None:
        raise DataError(f"{row.where()} field '{row.key('answer')}' = {answer!r} is neither a letter, an index "
                        "nor the text of one of the choices")
    meta = {k: v for k, v in (("level", _level(row.get("level"))), ("subject", row.get("subject"))) if v is not None}
    return {"id": row.get("id"), "problem": render_choices(_text(row.need("problem")), choices), "answer": letter,
            "choices": choices, "domain": "multiple_choice", "meta": meta}


def _letter(answer, choices: list[str]) -> str | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | float) and int(answer) == answer and 0 <= int(answer) < len(choices):
        return LETTERS[int(answer)]
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[:len(choices)]:
        return text.upper()
    if text.strip("()").upper() in LETTERS[:len(choices)] and len(text.strip("()")) == 1:
        return text.strip("()").upper()
    hits = [LETTERS[i] for i, c in enumerate(choices) if c.strip() == text]
    return hits[0] if len(hits) == 1 else None


def _gpqa_row(row: Row, spec: DataFile) -> dict:
    """GPQA (Question, Correct Answer, Incorrect Answer 1-3): choices shuffled once per row, seeded."""
    question = _text(row.need("problem", ("question",)))
    correct = _text(row.need("answer", ("correct answer",))).strip()
    wrong = [_text(row.need(f"incorrect answer {i}", (f"incorrect answer {i}",))).strip() for i in (1, 2, 3)]
    rid = str(row.get("id") or f"{row.path.stem}-{row.n}")
    choices = [correct, *wrong]
    random.Random(f"{spec.choices_seed}:{rid}").shuffle(choices)
    meta = {k: v for k, v in (("subject", row.get("subject", ("subdomain", "high-level domain"))),) if v is not None}
    return {"id": rid, "problem": render_choices(question, choices), "answer": LETTERS[choices.index(correct)],
            "choices": choices, "domain": "multiple_choice", "meta": meta}


def _tests(row: Row, raw) -> list[dict]:
    """Test cases: a list of {"input", "output"[, "testtype"]} (or a JSON string of one), or APPS-style
    {"inputs": [...], "outputs": [...]}."""
    field = row.key("tests") or "tests"
    raw = _decoded(row, raw, field, "JSON test cases")
    if isinstance(raw, dict) and "inputs" in raw:
        raw = [{"input": i, "output": o} for i, o in zip(raw["inputs"], raw.get("outputs") or [], strict=False)]
    if not isinstance(raw, list) or not all(isinstance(c, dict) and "input" in c and "output" in c for c in raw):
        raise DataError(f"{row.where()} field '{field}' must be a list of {{\"input\", \"output\"}} test cases")
    return [{"input": _case_text(c["input"]), "output": _case_text(c["output"]),
             "testtype": c.get("testtype") or "stdin"} for c in raw]


def _case_text(v) -> str:
    if isinstance(v, list):
        return "\n".join(_case_text(x) for x in v)
    return v if isinstance(v, str) else json.dumps(v)


def _code_row(row: Row, spec: DataFile) -> dict:
    """LiveCodeBench (question_content, public_test_cases, private_test_cases, starter_code, metadata)."""
    tests = _tests(row, row.need("tests"))
    private = row.data.get("private_test_cases")
    if private and row.key("tests") != "private_test_cases":
        try:  # published as JSON, or base64/zlib/pickle, which is never unpickled here
            tests += _tests(row, json.loads(private) if isinstance(private, str) else private)
        except (json.JSONDecodeError, DataError):
            pass
    problem = _text(row.need("problem"))
    meta = {"level": _level(row.get("level"))} if row.get("level") is not None else {}
    fn_name = row.data.get("fn_name")
    metadata = row.data.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            metadata = None
    if isinstance(metadata, dict):
        fn_name = fn_name or metadata.get("func_name")
    starter = row.data.get("starter_code")
    if starter:
        problem += f"\n\nUse this starter code:\n```python\n{starter}\n```"
    out = {"id": row.get("id"), "problem": problem, "answer": "", "tests": tests, "domain": "code", "meta": meta}
    if fn_name:
        out["fn_name"] = fn_name
    return out


def _messages(row: Row) -> list[dict]:
    names = ("messages", "conversations")
    msgs = row.need("messages", names)
    if not isinstance(msgs, list):
        raise DataError(f"{row.where()} field '{row.key('messages', names)}' is not a list of messages")
    roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            raise DataError(f"{row.where()}: a message is not an object")
        role = roles.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value"))
        if role is None or not isinstance(content, str):
            raise DataError(f"{row.where()}: each message needs a role (user/assistant/system) and text content")
        out.append({"role": role, "content": content})
    return out


def _messages_row(row: Row, spec: DataFile) -> dict:
    """OpenAI messages (or ShareGPT conversations): the user turn is the problem; the answer is the row's
    `answer`, else the final \\boxed{} of the assistant turn."""
    from pai_distil.core.verify.text import final_part, last_boxed

    msgs = _messages(row)
    user = next((m["content"] for m in msgs if m["role"] == "user"), None)
    if user is None:
        raise DataError(f"{row.where()} has no user message")
    answer = row.get("answer")
    if answer is None:
        reply = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
        answer = last_boxed(final_part(reply))
    if answer is None:
        raise DataError(f"{row.where()} lacks field 'answer' and its assistant message has no \\boxed{{}} answer")
    return {"id": row.get("id", ("id",)), "problem": user, "answer": _text(answer), "domain": "math", "meta": {}}


def _cot_problem_row(row: Row, spec: DataFile) -> dict:
    p = _math_row(row, spec)
    p["id"] = row.get("id", ("problem_id", "id"))
    return p


# -- CoT samples --------------------------------------------------------------------------------


def read_cots(path: Path, spec: DataFile | None = None) -> list[dict]:
    """CoT samples (DESIGN.md) from generate's cots.jsonl, OmniThought-style rows (flat, or a `question`
    with a list of `reasoning` entries) or messages rows with `<think>` in the assistant turn."""
    spec = spec or DataFile()
    out = []
    for f in data_files(path, prefer=("scored.jsonl", "cots.jsonl")):
        records = read_records(f)[:spec.limit] if spec.limit else read_records(f)
        if not records:
            continue
        fmt = spec.format if spec.format != "auto" else detect(set(records[0][1]), f)
        if fmt not in ("cots", "messages"):
            raise DataError(f"{f} holds {fmt} rows, not chains of thought; CoT rows need thought and solution "
                            "(OmniThought style) or messages with <think> in the assistant turn")
        for n, data in records:
            row = Row(f, n, data, spec.fields, fmt)
            out += _messages_cot(row, spec) if fmt == "messages" else _omni_cots(row, spec)
    return out


def _annotation(value):
    v = _level(value)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _sample(row: Row, spec: DataFile, k: int | None, problem: str, entry: dict, answer, source_id) -> dict:
    sub = Row(row.path, row.n, entry, spec.fields, row.fmt)
    thought = sub.get("thought", ("thought", "reasoning_content", "deepseek_reasoning"))
    solution = sub.get("solution")
    full = sub.get("full_response", ("full_response",))
    if (thought is None or solution is None) and isinstance(full, str):
        from pai_distil.core.verify.text import split_thought

        thought, solution = split_thought(full)
    if solution is None:
        raise DataError(f"{row.where()}{'' if k is None else f' reasoning[{k}]'} lacks field "
                        f"'{spec.fields.solution or 'solution'}'")
    correct = sub.get("correct", ("correct", "verified", "is_correct"))
    if answer is None and correct:  # OmniThought has no answer column: a verified solution's box is the answer
        from pai_distil.core.verify.text import last_boxed

        answer = last_boxed(str(solution))
    rid = str(source_id or f"{row.path.stem}-{row.n}") + ("" if k is None else f"-{k}")
    sample = {
        "id": rid, "problem_id": str(source_id or f"{row.path.stem}-{row.n}"), "problem": problem,
        "answer": "" if answer is None else _text(answer), "thought": _text(thought or ""), "solution": _text(solution),
        "teacher": sub.get("teacher", ("teacher", "model")), "correct": None if correct is None else bool(correct),
        "rv": _annotation(sub.get("rv", ("rv", "reasoning_verbosity"))),
        "cd": _annotation(sub.get("cd", ("cd", "cognitive_difficulty"))),
        "domain": spec.verifier or str(row.get("domain") or "math"),
        "source": spec.source or str(row.get("source") or row.path.stem),
        "meta": {"row": row.n, "file": row.path.name},
    }
    if spec.verifier:
        sample["verifier"] = spec.verifier
    return sample


def _omni_cots(row: Row, spec: DataFile) -> list[dict]:
    problem = _text(row.need("problem"))
    answer = row.get("answer")
    source_id = row.get("id", ("id", "problem_id", "unique_id"))
    nested = row.data.get("reasoning")
    if isinstance(nested, list) and spec.fields.thought != "reasoning":
        if not nested:
            raise DataError(f"{row.where()} field 'reasoning' is an empty list")
        return [_sample(row, spec, k, problem, e if isinstance(e, dict) else {}, answer, source_id)
                for k, e in enumerate(nested)]
    sample = _sample(row, spec, None, problem, row.data, answer, source_id)
    for k in ("requested_rv", "finish_reason", "completion_tokens", "truncated", "max_tokens"):  # generate's own rows
        if k in row.data:
            sample[k] = row.data[k]
    if "id" in row.data and "problem_id" in row.data:
        sample["id"], sample["problem_id"] = str(row.data["id"]), str(row.data["problem_id"])
    if isinstance(row.data.get("meta"), dict):
        sample["meta"] = {**row.data["meta"], **sample["meta"]}
    return [sample]


def _messages_cot(row: Row, spec: DataFile) -> list[dict]:
    from pai_distil.core.verify.text import last_boxed, split_thought

    msgs = _messages(row)
    user = next((m["content"] for m in msgs if m["role"] == "user"), None)
    reply = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
    if user is None or reply is None:
        raise DataError(f"{row.where()} needs a user and an assistant message")
    thought, solution = split_thought(reply)
    answer = row.get("answer")
    answer = last_boxed(solution) if answer is None else answer
    return [_sample(row, spec, None, user, {"thought": thought, "solution": solution, **{
        k: v for k, v in row.data.items() if k not in ("messages", "conversations")}}, answer, row.get("id", ("id",)))]
