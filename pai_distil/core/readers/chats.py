"""Chat rows as users publish them: OpenAI `messages`, ShareGPT `conversations` and Alpaca.

Why one reader: an SFT row must reach the loss mask with every turn, the system prompt and each
assistant turn's `reasoning_content` as the user wrote them, whatever the file type (JSONL, JSON,
Parquet, CSV) and whatever the shape. Problems and CoT samples read from chat rows use the same
turns (`chat_messages`), so a row means one thing to every stage.
"""

from __future__ import annotations

from pai_distil.core.readers.files import DataError, Row, _decoded

CHAT_FIELDS = ("messages", "conversations")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Fields of a chat row that travel with its messages: template flags, and what `require_correct` reads.
KEPT = ("id", "correct", "answer", "verifier", "domain", "requested_rv", "rv", "chat_template_kwargs")


def chat_format(keys) -> str | None:
    """The chat shape a row's field names show: messages (OpenAI or ShareGPT turns), alpaca
    (instruction / input / output), or None for a row of another shape."""
    k = {str(x).lower() for x in keys}
    if k & set(CHAT_FIELDS):
        return "messages"
    if {"instruction", "output"} <= k:
        return "alpaca"
    return None


def chat_messages(row: Row) -> list[dict]:
    """The row's turns as OpenAI messages (`role`, `content`, and `reasoning_content` where an
    assistant turn has one), system prompt and earlier turns included."""
    if chat_format(row.data) == "alpaca":
        return _alpaca(row)
    field = row.key("messages", CHAT_FIELDS)
    msgs = _decoded(row, row.need("messages", CHAT_FIELDS), field, "a list of messages")
    if not isinstance(msgs, list):
        raise DataError(f"{row.where()} field '{field}' is not a list of messages")
    return [_message(row, m) for m in msgs]


def _message(row: Row, m) -> dict:
    if not isinstance(m, dict):
        raise DataError(f"{row.where()}: a message is not an object")
    role = ROLES.get(str(m.get("role") or m.get("from") or "").lower())
    content = _content(m.get("content") if m.get("content") is not None else m.get("value"))
    if role is None or content is None:
        raise DataError(f"{row.where()}: each message needs a role (user/assistant/system, or ShareGPT's "
                        "human/gpt/system) and text content")
    out = {"role": role, "content": content}
    if role == "assistant" and isinstance(m.get("reasoning_content"), str):
        out["reasoning_content"] = m["reasoning_content"]
    return out


def _content(value) -> str | None:
    """Text content: a string, or OpenAI's list of parts with their text joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return value if isinstance(value, str) else None


def _alpaca(row: Row) -> list[dict]:
    """Alpaca: `system`, `history` as [[question, answer], ...], then `instruction` and `input` joined
    by a newline (as LLaMA-Factory joins them) answered by `output`."""
    text = {f: row.data.get(f) for f in ("instruction", "input", "output", "system")}
    for f, value in text.items():
        if value is not None and not isinstance(value, str):
            raise DataError(f"{row.where()} field '{f}' must be text, got {type(value).__name__}")
    if not text["output"]:
        raise DataError(f"{row.where()} lacks field 'output' (the answer an Alpaca row trains)")
    msgs = [{"role": "system", "content": text["system"]}] if text["system"] else []
    history = _decoded(row, row.data.get("history") or [], "history", "a list of [question, answer] pairs")
    if not isinstance(history, list) or not all(_pair(p) for p in history):
        raise DataError(f"{row.where()} field 'history' must be a list of [question, answer] text pairs")
    for question, answer in history:
        msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    query = "\n".join(t for t in (text["instruction"], text["input"]) if t)
    return msgs + [{"role": "user", "content": query}, {"role": "assistant", "content": text["output"]}]


def _pair(p) -> bool:
    return isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(t, str) for t in p)


def sft_row(row: Row) -> dict:
    """An SFT row (`messages`, plus the KEPT fields the row has) from a chat row, every turn kept."""
    out = {"messages": chat_messages(row)}
    for k in KEPT:
        value = row.data.get(k)
        if value is not None and value != "":
            out[k] = _decoded(row, value, k, "JSON") if k == "chat_template_kwargs" else value
        if k in ("rv", "requested_rv") and isinstance(out.get(k), str) and out[k].strip().isdigit():
            out[k] = int(out[k])  # CSV
    if "correct" in out:
        out["correct"] = _flag(row, out["correct"])
    return out


def _flag(row: Row, value) -> bool:
    """`correct` as written: a boolean, or its text in a CSV file."""
    if isinstance(value, bool | int):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise DataError(f"{row.where()} field 'correct' must be true or false, got {value!r}")


def row_verdict(row: dict) -> bool | None:
    """Whether a training row's final answer is correct: its `correct` field; else its reply (an SFT
    row's final assistant turn, a CoT sample's solution) checked against its `answer` by its verifier
    (math by default); None when it has neither, so there is nothing to check."""
    if row.get("correct") is not None:
        return bool(row["correct"])
    if row.get("answer") is None or not str(row["answer"]).strip():
        return None
    from pai_distil.core.verifiers import verify

    if "messages" in row:
        reply = next((m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant"), "")
    else:
        reply = row.get("solution") or ""
    problem = {k: row[k] for k in ("verifier", "choices", "tests", "fn_name", "meta") if row.get(k) is not None}
    return verify({**problem, "answer": str(row["answer"]), "domain": row.get("domain") or "math"}, reply)


def read_chat_file(path, records: list[tuple[int, dict]], fields) -> list[dict]:
    """SFT rows of a file whose first row is a chat row; any other row there is refused in one line."""
    out = []
    for n, data in records:
        row = Row(path, n, data, fields, "messages")
        if chat_format(data) is None:
            raise DataError(f"{row.where()} is not a chat row like the file's first (messages, conversations, or "
                            "instruction and output)")
        out.append(sft_row(row))
    return out
