"""The users' own chat rows (OpenAI messages, ShareGPT, Alpaca): every turn, the system prompt and
`reasoning_content` kept, the same rows from every file type, and `require_correct`'s verdict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pai_distil.core.readers import DataError, read_cots, read_problems, read_sft_input, row_verdict

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [SYSTEM, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "And 3+3?"},
         {"role": "assistant", "reasoning_content": "3 and 3 make 6.", "content": "\\boxed{6}"}]
SHAREGPT = {"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "What is 2+2?"},
                              {"from": "gpt", "value": "4"}, {"from": "human", "value": "And 3+3?"},
                              {"from": "gpt", "value": "<think>\n3 and 3 make 6.\n</think>\n\n\\boxed{6}"}]}
ALPACA = {"system": "You are terse.", "history": [["What is 2+2?", "4"]], "instruction": "And 3+3?",
          "input": "Answer with a number.", "output": "6"}


def write(path: Path, rows: list[dict]) -> Path:
    """`rows` as a file of the type its suffix names; nested fields as JSON text in a CSV file."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows)
    return path


def test_messages_keep_every_turn_the_system_prompt_and_reasoning_content(tmp_path):
    (row,) = read_sft_input(write(tmp_path / "chat.json", [{"id": "a", "messages": TURNS}]))
    assert row == {"id": "a", "messages": TURNS}


def test_content_given_as_text_parts_is_joined(tmp_path):
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]
    (row,) = read_sft_input(write(tmp_path / "parts.jsonl", [{"messages": [{"role": "user", "content": parts},
                                                                           TURNS[2]]}]))
    assert row["messages"] == TURNS[1:3]


def test_sharegpt_roles_become_openai_messages(tmp_path):
    (row,) = read_sft_input(write(tmp_path / "sg.json", [SHAREGPT]))
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][:4] == TURNS[:4]
    assert row["messages"][4] == {"role": "assistant", "content": SHAREGPT["conversations"][4]["value"]}


def test_alpaca_system_history_instruction_and_input(tmp_path):
    (row,) = read_sft_input(write(tmp_path / "alpaca.jsonl", [ALPACA]))
    assert row["messages"] == [SYSTEM, {"role": "user", "content": "What is 2+2?"},
                               {"role": "assistant", "content": "4"},
                               {"role": "user", "content": "And 3+3?\nAnswer with a number."},
                               {"role": "assistant", "content": "6"}]


@pytest.mark.parametrize("row", [{"messages": TURNS, "correct": False}, SHAREGPT, ALPACA], ids=["messages", "sharegpt",
                                                                                              "alpaca"])
def test_every_file_type_gives_the_same_rows(tmp_path, row):
    got = [read_sft_input(write(tmp_path / f"rows{suffix}", [row, row])) for suffix in
           (".jsonl", ".json", ".parquet", ".csv")]
    assert got[0] == got[1] == got[2] == got[3] and len(got[0]) == 2


def test_template_flags_travel_with_the_row(tmp_path):
    row = {"messages": TURNS[1:3], "chat_template_kwargs": {"enable_thinking": False}}
    for suffix in (".jsonl", ".csv"):
        (got,) = read_sft_input(write(tmp_path / f"flags{suffix}", [row]))
        assert got == row


def test_a_multi_turn_row_is_no_chain_of_thought(tmp_path):
    """Stages that read CoT samples (score, adaptive-thinking) refuse a multi-turn row rather than pair
    its first question with its last answer."""
    f = write(tmp_path / "chat.json", [{"messages": TURNS}])
    with pytest.raises(DataError, match=r"row 1 holds 4 turns; a chain of thought here is one user and one assistant "
                                        r"message \(train multi-turn chat rows with slow-thinking\)$"):
        read_cots(f)
    (single,) = read_cots(write(tmp_path / "one.json", [{"messages": [SYSTEM, *TURNS[3:]]}]))
    assert (single["problem"], single["thought"], single["solution"]) == ("And 3+3?", "3 and 3 make 6.", "\\boxed{6}")
    assert single["system"] == "You are terse." and single["answer"] == "6"


def test_a_row_of_another_shape_in_a_chat_file_is_refused(tmp_path):
    f = write(tmp_path / "mixed.jsonl", [{"messages": TURNS}, {"problem": "p", "answer": "1"}])
    with pytest.raises(DataError, match=r"mixed.jsonl row 2 is not a chat row like the file's first"):
        read_sft_input(f)


@pytest.mark.parametrize("message", [{"from": "observation", "value": "x"}, {"role": "user", "content": 3}])
def test_a_message_without_a_known_role_or_text_is_refused(tmp_path, message):
    f = write(tmp_path / "bad.jsonl", [{"messages": [message]}])
    with pytest.raises(DataError, match=r"bad.jsonl row 1: each message needs a role \(user/assistant/system"):
        read_sft_input(f)


def test_verdict_from_correct_else_the_answer_else_none(tmp_path):
    rows = read_sft_input(write(tmp_path / "v.csv", [
        {"messages": TURNS, "correct": "false", "answer": ""}, {"messages": TURNS, "correct": "", "answer": "6"},
        {"messages": TURNS, "correct": "", "answer": "7"}, {"messages": TURNS, "correct": "", "answer": ""}]))
    assert [row_verdict(r) for r in rows] == [False, True, False, None]
    cot = {"problem": "3+3?", "thought": "t", "solution": "\\boxed{6}", "answer": "6", "correct": None}
    assert [row_verdict({**cot, **kw}) for kw in ({}, {"answer": "7"}, {"answer": ""}, {"correct": False})] == \
        [True, False, None, False]


def test_alpaca_rows_are_problems_and_chains_of_thought(tmp_path):
    path = write(tmp_path / "alpaca.jsonl", [{"instruction": "What is 2+3?", "input": "",
                                               "output": "<think>2 and 3 make 5.</think>\\boxed{5}"}])
    (problem,) = read_problems(path)
    assert (problem["problem"], problem["answer"]) == ("What is 2+3?", "5")
    (cot,) = read_cots(path)
    assert (cot["problem"], cot["thought"], cot["solution"]) == ("What is 2+3?", "2 and 3 make 5.", "\\boxed{5}")
