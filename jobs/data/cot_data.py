"""Reading CoT samples for the SFT stages and turning them into chat rows."""

from __future__ import annotations

from pathlib import Path

from pai_distil.core import readers
from pai_distil.core.config import DataFile

from pai_distil.core.contract import JobError
from pai_distil.core.think import EMPTY_THOUGHT, think_block
from pai_distil_jobs.endpoints.prompts import user_message


def read_cots(path: Path, name: str = "cots", data: DataFile | None = None, own_rows: bool = True) -> list[dict]:
    """Rows of the CoT input `name` (pai_distil.core.readers.read_cot_input): the output of `score` or
    `generate` as it is (with `own_rows`), or published CoT data (OmniThought-style rows, messages);
    a bad file is one JobError naming the input."""
    try:
        return readers.read_cot_input(path, data, own_rows=own_rows)
    except readers.DataError as e:
        raise JobError(f"input '{name}': {e}") from None


def read_sft(path: Path, name: str = "cots") -> list[dict]:
    """Rows of a training stage's input `name` (pai_distil.core.readers.read_sft_input): chat rows as
    SFT rows with every turn, CoT rows as CoT samples; a bad file is one JobError naming the input."""
    try:
        return readers.read_sft_input(path)
    except readers.DataError as e:
        raise JobError(f"input '{name}': {e}") from None


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
