"""Reading CoT samples for the SFT stages and turning them into chat rows."""

from __future__ import annotations

from pathlib import Path

from pai_distil.core import readers as datasets

from pai_distil.core.contract import JobError
from pai_distil.core.think import EMPTY_THOUGHT, think_block
from pai_distil_jobs.data.problems import read_jsonl
from pai_distil_jobs.endpoints.prompts import user_message

# Preferred file of an input directory: scored samples, then raw samples, then SFT rows.
CANDIDATES = ("scored.jsonl", "cots.jsonl", "sft.jsonl")


def read_cots(path: Path, name: str = "cots") -> list[dict]:
    """Rows of a CoT input: the output of `score` or `generate` (rows kept as they are, with their
    metadata), or published CoT data (OmniThought-style rows, messages) read by `datasets`."""
    if path.is_dir():
        found = next((path / c for c in CANDIDATES if (path / c).is_file()), None)
        if found is None:
            raise JobError(f"input '{name}' ({path}) holds none of {', '.join(CANDIDATES)}; "
                           "pass the output of `generate` or `score`")
        path = found
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        if not rows or {"problem", "thought", "solution"} <= set(rows[0]) or "messages" in rows[0]:
            return rows
    try:
        return datasets.read_cots(path)
    except datasets.DataError as e:
        raise JobError(str(e)) from None


def require(row: dict, n: int, fields: tuple[str, ...], path_hint: str = "input") -> None:
    for f in fields:
        if f not in row:
            raise JobError(f"{path_hint} row {n}: field '{f}' is missing; CoT rows need {', '.join(fields)}")


def assistant_text(row: dict) -> str:
    """The assistant turn of a CoT sample: the chain inside <think>, then the solution."""
    return think_block(row['thought'], row['solution'])


def thinking_row(row: dict, user_suffix: str = "") -> dict:
    """The user turn is what `evaluate` will ask (the problem plus its answer format)."""
    return {"messages": [{"role": "user", "content": user_message(row) + user_suffix},
                         {"role": "assistant", "content": assistant_text(row)}]}


def non_thinking_row(row: dict, soft_switch: bool) -> dict:
    """A direct answer: `/no_think` in the user turn, or the template's enable_thinking=False."""
    user = user_message(row) + (" /no_think" if soft_switch else "")
    out = {"messages": [{"role": "user", "content": user},
                        {"role": "assistant", "content": EMPTY_THOUGHT + row["solution"]}]}
    if not soft_switch:
        out["chat_template_kwargs"] = {"enable_thinking": False}
    return out
