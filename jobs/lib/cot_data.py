"""Reading CoT samples for the SFT stages and turning them into chat rows."""

from __future__ import annotations

from pathlib import Path

from ..contract import JobError
from .problems import read_jsonl

# Preferred file of an input directory: scored samples, then raw samples, then SFT rows.
CANDIDATES = ("scored.jsonl", "cots.jsonl", "sft.jsonl")
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


def read_cots(path: Path, name: str = "cots") -> list[dict]:
    """Rows of a CoT input: an artifact directory (score or generate output) or a JSONL file."""
    if path.is_dir():
        found = next((path / c for c in CANDIDATES if (path / c).is_file()), None)
        if found is None:
            raise JobError(f"input '{name}' ({path}) holds none of {', '.join(CANDIDATES)}; "
                           "pass the output of `generate` or `score`")
        path = found
    return read_jsonl(path)


def require(row: dict, n: int, fields: tuple[str, ...], path_hint: str = "input") -> None:
    for f in fields:
        if f not in row:
            raise JobError(f"{path_hint} row {n}: field '{f}' is missing; CoT rows need {', '.join(fields)}")


def assistant_text(row: dict) -> str:
    """The assistant turn of a CoT sample: the chain inside <think>, then the solution."""
    return f"<think>\n{row['thought']}\n</think>\n\n{row['solution']}"


def thinking_row(row: dict, user_suffix: str = "") -> dict:
    return {"messages": [{"role": "user", "content": row["problem"] + user_suffix},
                         {"role": "assistant", "content": assistant_text(row)}]}


def non_thinking_row(row: dict, soft_switch: bool) -> dict:
    """A direct answer: `/no_think` in the user turn, or the template's enable_thinking=False."""
    user = row["problem"] + (" /no_think" if soft_switch else "")
    out = {"messages": [{"role": "user", "content": user},
                        {"role": "assistant", "content": EMPTY_THOUGHT + row["solution"]}]}
    if not soft_switch:
        out["chat_template_kwargs"] = {"enable_thinking": False}
    return out
