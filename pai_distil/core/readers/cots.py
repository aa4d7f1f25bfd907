"""CoT samples (docs/architecture.md: `id, problem, answer, thought, solution, teacher, correct, rv, cd`): this
project's own rows as the stages read them, and published CoT data (OmniThought-style rows, messages)."""

from __future__ import annotations

from pathlib import Path

from pai_distil.core.config import DataFile
from pai_distil.core.think import split_thought
from pai_distil.core.readers.files import DataError, Row, _level, _text, data_files, detect, read_records
from pai_distil.core.readers.chats import CHAT_FIELDS, chat_format, chat_messages, read_chat_file

# -- CoT samples --------------------------------------------------------------------------------


# Preferred file of a stage's CoT input directory: scored samples, then raw samples, then SFT rows.
COT_FILES = ("scored.jsonl", "cots.jsonl", "sft.jsonl")


def read_cot_input(path: Path, spec: DataFile | None = None, own_rows: bool = True) -> list[dict]:
    """CoT samples of a stage's input: in a directory, the first of COT_FILES it holds. With `own_rows`,
    this project's JSONL rows (generate's or score's: problem, thought, solution) come as they are, with
    every field they carry; anything else (published CoT data, single-turn chat rows) is read by
    `read_cots`."""
    path = _input_file(path)
    if own_rows and path.suffix == ".jsonl":
        records = read_records(path)
        if _own_rows(records):
            return [row for _, row in records]
    return read_cots(path, spec)


def read_sft_input(path: Path, spec: DataFile | None = None) -> list[dict]:
    """Rows of a training stage's input: chat rows (OpenAI messages, ShareGPT, Alpaca; any file type)
    as SFT rows with every turn (`chats.sft_row`); this project's CoT rows as they are; published CoT
    data as CoT samples (`read_cots`)."""
    path = _input_file(path)
    records = read_records(path)
    if records and chat_format(records[0][1]):
        spec = spec or DataFile()
        return read_chat_file(path, records[:spec.limit] if spec.limit else records, spec.fields)
    if path.suffix == ".jsonl" and _own_rows(records):
        return [row for _, row in records]
    return read_cots(path, spec)


def _input_file(path: Path) -> Path:
    """The file of a CoT input: the path itself, or the first of COT_FILES in a directory."""
    path = Path(path)
    if path.is_dir():
        found = next((path / c for c in COT_FILES if (path / c).is_file()), None)
        if found is None:
            raise DataError(f"{path} holds none of {', '.join(COT_FILES)}; pass the output of `generate` or `score`")
        path = found
    return path


def _own_rows(records: list[tuple[int, dict]]) -> bool:
    return not records or {"problem", "thought", "solution"} <= set(records[0][1])


def read_cots(path: Path, spec: DataFile | None = None) -> list[dict]:
    """CoT samples (docs/architecture.md) from generate's cots.jsonl, OmniThought-style rows (flat, or a `question`
    with a list of `reasoning` entries) or messages rows with `<think>` in the assistant turn."""
    spec = spec or DataFile()
    out = []
    for f in data_files(path, prefer=("scored.jsonl", "cots.jsonl")):
        records = read_records(f)[:spec.limit] if spec.limit else read_records(f)
        if not records:
            continue
        keys = set(records[0][1])
        fmt = spec.format if spec.format != "auto" else "messages" if chat_format(keys) else detect(keys, f)
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
    """A single-turn chat row as a CoT sample (a system prompt is kept as `system`); a multi-turn row is
    refused, since a CoT sample is one problem and one answer."""
    from pai_distil.core.verify.text import last_boxed

    msgs = chat_messages(row)
    turns = [m for m in msgs if m["role"] != "system"]
    if [m["role"] for m in turns] != ["user", "assistant"]:
        raise DataError(f"{row.where()} holds {len(turns)} turns; a chain of thought here is one user and one "
                        "assistant message (train multi-turn chat rows with slow-thinking)")
    user, reply = turns
    thought, solution = split_thought(reply["content"])
    if reply.get("reasoning_content"):
        thought = reply["reasoning_content"].strip()
    answer = row.get("answer")
    answer = last_boxed(solution) if answer is None else answer
    sample = _sample(row, spec, None, user["content"], {"thought": thought, "solution": solution, **{
        k: v for k, v in row.data.items() if k not in CHAT_FIELDS}}, answer, row.get("id", ("id",)))
    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
    return [{**sample, "system": system} if system else sample]
