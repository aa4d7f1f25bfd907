"""Problem rows (docs/architecture.md: `id, problem, answer, domain, meta`, plus `choices`, `tests`, `source`,
`verifier` where they apply) from problem sets in the shapes they are published in."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pai_distil.core import world
from pai_distil.core.config import DataFile, FieldNames, ProblemData
from pai_distil.core.readers.chats import chat_messages
from pai_distil.core.readers.files import (FORMAT_VERIFIER, LETTERS, DataError, Row, _decoded, _level, _text,
                                           data_files, detect, read_records)

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


def _messages_row(row: Row, spec: DataFile) -> dict:
    """OpenAI messages (or ShareGPT conversations): the user turn is the problem; the answer is the row's
    `answer`, else the final \\boxed{} of the assistant turn."""
    from pai_distil.core.verify.text import final_part, last_boxed

    msgs = chat_messages(row)
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

