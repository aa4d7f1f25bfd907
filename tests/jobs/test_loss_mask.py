"""The SFT loss mask (`sft_data.encode_messages`): exactly the final assistant turn's tokens are trained,
from after the generation prompt through the end-of-turn token, on the real Qwen3 tokenizer and
templates and on the project's preset tokenizer. Expected tokens are written out by hand."""

from __future__ import annotations

import functools
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from real_models import GENERATION_TEMPLATE, NO_END_TEMPLATE, QWEN25_TEMPLATE, R1_TEMPLATE, qwen_tokenizer  # noqa: E402

from pai_distil_jobs.train.sft_data import IGNORE, MaskError, collate, encode_messages, marked_example  # noqa: E402

USER = {"role": "user", "content": "2+2?"}
THOUGHT = {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}
# `<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n` in Qwen's tokens
QWEN_PROMPT = ["<|im_start|>", "user", "Ċ", "2", "+", "2", "?", "<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
QWEN_THOUGHT_TURN = ["<think>", "Ċ", "add", "Ċ", "</think>", "ĊĊ", "4", "<|im_end|>"]


@functools.cache
def preset():
    from pai_distil_jobs.models.models import load_tokenizer

    return load_tokenizer("preset:micro")


def split(tok, enc: dict) -> tuple[list[str], list[str | None]]:
    """(every token, the trained token at each position or None)."""
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    trained = [None if label == IGNORE else tok.convert_ids_to_tokens(label) for label in enc["labels"]]
    return tokens, trained


def test_qwen3_trains_the_thought_answer_and_end_of_turn_only():
    tok = qwen_tokenizer()
    enc = encode_messages(tok, [USER, THOUGHT], 100)
    tokens, trained = split(tok, enc)
    assert tokens == [*QWEN_PROMPT, *QWEN_THOUGHT_TURN, "Ċ"]
    assert trained == [None] * 12 + QWEN_THOUGHT_TURN + [None]  # the newline after <|im_end|> is no target
    assert [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE] == \
        [label for label in enc["labels"] if label != IGNORE]  # labels are the ids themselves, not shifted
    assert (enc["truncated"], enc["ended"]) == (False, True)


def test_reasoning_content_is_the_same_row_as_a_think_block():
    tok = qwen_tokenizer()
    split_row = [USER, {"role": "assistant", "reasoning_content": "add", "content": "4"}]
    assert encode_messages(tok, split_row, 100) == encode_messages(tok, [USER, THOUGHT], 100)


def test_qwen3_answer_without_a_thought_trains_the_empty_thought_qwen3_writes():
    tok = qwen_tokenizer()
    tokens, trained = split(tok, encode_messages(tok, [USER, {"role": "assistant", "content": "4"}], 100))
    assert trained == [None] * 12 + ["<think>", "ĊĊ", "</think>", "ĊĊ", "4", "<|im_end|>", None]
    assert tokens[12:] == ["<think>", "ĊĊ", "</think>", "ĊĊ", "4", "<|im_end|>", "Ċ"]


def test_enable_thinking_false_leaves_the_prefilled_empty_thought_in_the_prompt():
    tok = qwen_tokenizer()
    enc = encode_messages(tok, [USER, {"role": "assistant", "content": "4"}], 100, {"enable_thinking": False})
    tokens, trained = split(tok, enc)
    assert tokens == [*QWEN_PROMPT, "<think>", "ĊĊ", "</think>", "ĊĊ", "4", "<|im_end|>", "Ċ"]
    assert trained == [None] * 16 + ["4", "<|im_end|>", None]


def test_a_thought_with_enable_thinking_false_is_refused():
    with pytest.raises(MaskError, match=r"^the row has a thought but its chat_template_kwargs make the prompt "
                                        r"pre-fill an empty one \(enable_thinking=False\); drop the flag or the thought$"):
        encode_messages(qwen_tokenizer(), [USER, THOUGHT], 100, {"enable_thinking": False})


def test_earlier_turns_are_context_only():
    tok = qwen_tokenizer()
    convo = [{"role": "system", "content": "S"}, USER, {"role": "assistant", "content": "<think>\nx\n</think>\n\n3"},
             {"role": "user", "content": "again"}, THOUGHT]
    tokens, trained = split(tok, encode_messages(tok, convo, 100))
    # Qwen3's template drops the earlier turn's thought; only the final turn is trained
    assert tokens[:25] == ["<|im_start|>", "system", "Ċ", "S", "<|im_end|>", "Ċ", *QWEN_PROMPT,
                           "3", "<|im_end|>", "Ċ", "<|im_start|>", "user", "Ċ", "again"]
    assert trained == [None] * 30 + QWEN_THOUGHT_TURN + [None]


def test_r1_template_trains_after_the_think_it_opens():
    tok = qwen_tokenizer(R1_TEMPLATE)
    tokens, trained = split(tok, encode_messages(tok, [USER, THOUGHT], 100))
    assert tokens == [*QWEN_PROMPT, *QWEN_THOUGHT_TURN, "Ċ"]
    assert trained == [None] * 14 + ["add", "Ċ", "</think>", "ĊĊ", "4", "<|im_end|>", None]


def test_qwen25_template_trains_the_thought_it_would_strip_nothing_of():
    tok = qwen_tokenizer(QWEN25_TEMPLATE)
    tokens, trained = split(tok, encode_messages(tok, [USER, THOUGHT], 100))
    assert tokens[:3] == ["<|im_start|>", "system", "Ċ"]  # Qwen2.5's default system prompt: 21 tokens
    assert tokens[21:] == [*QWEN_PROMPT, *QWEN_THOUGHT_TURN, "Ċ"]
    assert trained == [None] * 33 + QWEN_THOUGHT_TURN + [None]


def test_generation_markers_extended_over_the_end_of_turn():
    tok = qwen_tokenizer(GENERATION_TEMPLATE)
    tokens, trained = split(tok, encode_messages(tok, [USER, {"role": "assistant", "content": "4"}], 100))
    assert tokens[21:] == [*QWEN_PROMPT, "4", "<|im_end|>", "Ċ"]
    assert trained == [None] * 33 + ["4", "<|im_end|>", None]  # <|im_end|> is outside the block in the template


def test_truncation():
    tok = qwen_tokenizer()
    cut = encode_messages(tok, [USER, THOUGHT], 15)
    assert split(tok, cut)[1] == [None] * 12 + ["<think>", "Ċ", "add"]
    assert (cut["truncated"], cut["ended"]) == (True, False)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 15
    one = encode_messages(tok, [USER, THOUGHT], 13)  # the first trained token still fits
    assert split(tok, one)[1] == [None] * 12 + ["<think>"]
    assert encode_messages(tok, [USER, THOUGHT], 12) is None  # the prompt alone fills max_length


@pytest.mark.parametrize("messages", [[], [USER], [USER, THOUGHT, USER]])
def test_the_last_message_must_be_the_assistant(messages):
    with pytest.raises(MaskError, match="^the last message must be the assistant's answer$"):
        encode_messages(qwen_tokenizer(), messages, 100)


def test_a_template_without_an_end_of_turn_token_is_refused():
    with pytest.raises(MaskError, match="^the chat template ends an assistant turn with no special token"):
        encode_messages(qwen_tokenizer(NO_END_TEMPLATE), [USER, {"role": "assistant", "content": "4"}], 100)


def test_preset_tokenizer():
    """The preset's merges are learned from the synthetic world, so the split is checked as text."""
    tok = preset()
    enc = encode_messages(tok, [USER, THOUGHT], 100)
    ids, labels = enc["input_ids"], enc["labels"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    last = max(i for i, label in enumerate(labels) if label != IGNORE)
    assert tok.decode(ids[:first]) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids[first:last + 1]) == "<think>\nadd\n</think>\n\n4<|im_end|>"
    assert all(label == i for i, label in zip(ids[first:last + 1], labels[first:last + 1]))
    assert tok.decode(ids[last + 1:]) == "\n" and labels[last + 1:] == [IGNORE] * (len(ids) - last - 1)
    assert tok.convert_ids_to_tokens(ids[first]) == "<think>" and tok.convert_ids_to_tokens(ids[last]) == "<|im_end|>"


def test_preset_tokenizer_no_thinking_row():
    tok = preset()
    enc = encode_messages(tok, [USER, {"role": "assistant", "content": "<think>\n\n</think>\n\n4"}], 100,
                          {"enable_thinking": False})
    tokens, trained = split(tok, enc)
    assert tokens[-3:] == ["4", "<|im_end|>", "Ċ"]
    assert trained == [None] * (len(tokens) - 3) + ["4", "<|im_end|>", None]


def test_preset_tokenizer_plain_answer_trains_the_empty_thought_as_qwen3():
    """A final answer with no thought: the preset's template writes the empty thought Qwen3's writes;
    with enable_thinking=False the prompt holds it and only the answer is trained."""
    tok = preset()
    plain = [USER, {"role": "assistant", "content": "4"}]
    tokens, trained = split(tok, encode_messages(tok, plain, 100))
    assert tok.convert_tokens_to_string([t for t in trained if t]) == "<think>\n\n</think>\n\n4<|im_end|>"
    tokens, trained = split(tok, encode_messages(tok, plain, 100, {"enable_thinking": False}))
    assert trained == [None] * (len(tokens) - 3) + ["4", "<|im_end|>", None]


def test_collate_pads_right_with_ignored_labels():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# -- users' chat rows, read as slow-thinking reads them ---------------------------------------------


def trained_text(tok, enc: dict) -> tuple[str, list[str]]:
    """(the text before the first trained token, each trained span decoded)."""
    labels, ids = enc["labels"], enc["input_ids"]
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append(tok.decode(ids[start:i]))
            start = None
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    return tok.decode(ids[:first]), spans


def chat_rows(tmp_path, name: str, rows: list[dict]) -> list[dict]:
    from pai_distil_jobs.stages.slow_thinking import sft_rows

    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows))
    return sft_rows(path, require_correct=True)


# What the student sees before the final turn: the system prompt and the earlier turn, nothing added.
CHAT_PROMPT = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
               "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
SHAREGPT = {"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "What is 2+2?"},
                              {"from": "gpt", "value": "4"}, {"from": "human", "value": "And 3+3?"},
                              {"from": "gpt", "value": "<think>\n3 and 3 make 6.\n</think>\n\n6"}]}
MESSAGES = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "reasoning_content": "2 and 2.", "content": "4"},
                         {"role": "user", "content": "And 3+3?"},
                         {"role": "assistant", "reasoning_content": "3 and 3 make 6.", "content": "6"}]}
FINAL_TURN = "<think>\n3 and 3 make 6.\n</think>\n\n6<|im_end|>"


@pytest.mark.parametrize("name,row", [("sharegpt.json", SHAREGPT), ("messages.json", MESSAGES)])
def test_multi_turn_chat_rows_train_the_final_turn_after_every_earlier_one(tmp_path, name, row):
    tok = qwen_tokenizer()
    (sft,) = chat_rows(tmp_path, name, [row])
    assert trained_text(tok, encode_messages(tok, sft["messages"], 200)) == (CHAT_PROMPT, [FINAL_TURN])


def test_alpaca_rows_with_system_prompt_and_history(tmp_path):
    tok = qwen_tokenizer()
    alpaca = {"system": "You are terse.", "history": [["What is 2+2?", "4"]], "instruction": "And 3+3?", "input": "",
              "output": "<think>\n3 and 3 make 6.\n</think>\n\n6"}
    (sft,) = chat_rows(tmp_path, "alpaca.jsonl", [alpaca])
    assert trained_text(tok, encode_messages(tok, sft["messages"], 200)) == (CHAT_PROMPT, [FINAL_TURN])


@pytest.mark.parametrize("template,earlier", [
    (None, "4<|im_end|>"),  # Qwen3 strips an earlier turn's thought: it is trained as rendered
    (R1_TEMPLATE, "4<|im_end|>"),
    (QWEN25_TEMPLATE, "<think>\n2 and 2.\n</think>\n\n4<|im_end|>"),
    (GENERATION_TEMPLATE, "<think>\n2 and 2.\n</think>\n\n4<|im_end|>"),
])
def test_all_turns_trains_each_assistant_turn_as_the_template_renders_it(template, earlier):
    tok = qwen_tokenizer(template)
    final = FINAL_TURN.removeprefix("<think>\n") if template == R1_TEMPLATE else FINAL_TURN  # R1's prompt opens it
    prompt, spans = trained_text(tok, encode_messages(tok, MESSAGES["messages"], 300, all_turns=True))
    assert spans == [earlier, final]
    # R1 keeps the newlines after the thought it strips: one token with the turn header's newline, untrained
    assert prompt.rstrip("\n").endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant")
    assert trained_text(tok, encode_messages(tok, MESSAGES["messages"], 300))[1] == [final]


def test_r1_answer_inside_the_end_of_turn_text_trains():
    """`d`, `e`, `end` are substrings of `<|im_end|>`: the answer is found by the token's offset."""
    tok = qwen_tokenizer(R1_TEMPLATE)
    for answer in ("d", "e", "end"):
        enc = encode_messages(tok, [USER, {"role": "assistant", "content": f"<think>\nadd\n</think>\n\n{answer}"}], 100)
        assert trained_text(tok, enc) == ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n",
                                          [f"add\n</think>\n\n{answer}<|im_end|>"])


def test_require_correct_drops_only_rows_with_an_answer_that_fails(tmp_path):
    from pai_distil.core.contract import JobError

    ok = {**MESSAGES, "answer": "6"}
    rows = chat_rows(tmp_path, "c.jsonl", [SHAREGPT, ok, {**MESSAGES, "answer": "7"}, {**MESSAGES, "correct": False}])
    assert [r["messages"][-1]["content"] for r in rows] == [SHAREGPT["conversations"][-1]["value"], "6"]
    with pytest.raises(JobError, match=r"^no training rows: 2 of 2 rows dropped as not verified correct \(set "
                                       r"require_correct: false to train them anyway\)$"):
        chat_rows(tmp_path, "wrong.jsonl", [{**MESSAGES, "answer": "7"}, {**MESSAGES, "correct": False}])


def test_marked_example_shows_the_trained_text_between_brackets():
    tok = qwen_tokenizer()
    enc = encode_messages(tok, [USER, {"role": "assistant", "reasoning_content": "x" * 300, "content": "4"}], 400)
    shown = marked_example(tok, enc["input_ids"], enc["labels"], width=60)  # the 330-character turn: 30 + 30 kept
    assert shown == ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
                     f"[[<think>\n{'x' * 22} …[270 characters]… {'x' * 8}\n</think>\n\n4<|im_end|>]]\n")
