"""Turning SFT rows (OpenAI `messages`) into token ids, with the loss on exactly the tokens the student
must write at inference: its final assistant turn after the template's generation prompt, through the
template's end-of-turn token.

Why not the template's render alone: real templates disagree with their own generation prompt.
DeepSeek-R1-Distill's strips the thought from every assistant turn and opens `<think>` in the
generation prompt, so the conversation rendered whole is not the prompt plus an answer. We render
the prompt with the template and write the answer after it ourselves, then check that the template
agrees on the answer and its end, found by the end-of-turn token's offset (an answer `d` is inside
`<|im_end|>`'s text). A template with `{% generation %}` markers is trusted as it is.
Earlier assistant turns stay context by default; with `all_turns` they are trained too, as the
template renders them inside the conversation (thoughts stripped where it strips them), each from
the start of its content through its end-of-turn token, located by token offsets.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from pai_distil.core.think import THINK_CLOSE

from pai_distil_jobs.models.chat_template import OPENED_THINK, end_of_turn, has_generation_markers, render, split_thought, think_block

IGNORE = -100
WARN_TRUNCATED = 0.01
FIX_TEMPLATE = ("use a checkpoint whose tokenizer_config.json (or chat_template.jinja) has a chat template with "
                "{% generation %} markers, or one that renders the prompt as the start of the conversation")


class MaskError(ValueError):
    """A row or a chat template whose trained tokens cannot be told apart exactly (one line, with the fix)."""


def final_turn(messages: list[dict]) -> tuple[list[dict], str | None, str]:
    """(messages with each assistant turn's `reasoning_content` as a `<think>` block in its content, as
    the template then renders or strips it; the final turn's thought; its answer)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise MaskError("the last message must be the assistant's answer")
    thought, answer = split_thought(messages[-1])
    last = {k: v for k, v in messages[-1].items() if k != "reasoning_content"}
    last["content"] = think_block(thought, answer)
    return [*map(_inline_thought, messages[:-1]), last], thought, answer


def _inline_thought(message: dict) -> dict:
    if message.get("role") != "assistant" or message.get("reasoning_content") is None:
        return message
    rest = {k: v for k, v in message.items() if k != "reasoning_content"}
    return {**rest, "content": think_block(*split_thought(message))}


def _completion(tokenizer, messages: list[dict], thought: str | None, answer: str, kwargs: dict,
                eot: int | None) -> tuple[str, str]:
    """(prompt text, text the student writes after it) for the final assistant turn."""
    prompt = render(tokenizer, messages[:-1], True, **kwargs)
    full = render(tokenizer, messages, False, **kwargs)
    prefilled = prompt.rstrip().endswith(THINK_CLOSE)  # enable_thinking=False: the prompt holds an empty thought
    if prefilled and thought:
        raise MaskError("the row has a thought but its chat_template_kwargs make the prompt pre-fill an empty one "
                        "(enable_thinking=False); drop the flag or the thought")
    tail = full[len(prompt):] if full.startswith(prompt) else None
    if tail is not None and (thought is None or prefilled or (THINK_CLOSE in tail and thought in tail)):
        return prompt, tail  # the template writes the turn as the student will (Qwen3, Qwen2.5)
    opened = OPENED_THINK.search(prompt)
    base = prompt[:opened.start()] if opened else prompt
    if not full.startswith(base):
        raise MaskError("the chat template renders the prompt differently inside the conversation, so the "
                        f"trained tokens cannot be found; {FIX_TEMPLATE}")
    end = answer.rstrip()
    suffix = _after_answer(tokenizer, full[len(base):], end, eot)
    if not opened:  # a template that strips the final thought: the student still writes it
        return prompt, think_block(thought, end) + suffix
    block, opener = think_block(thought or "", end), prompt[opened.start():]
    if not block.startswith(opener):
        raise MaskError(f"the generation prompt opens the thought as {opener!r}, which rows cannot continue; {FIX_TEMPLATE}")
    return prompt, block[len(opener):] + suffix  # the prompt wrote `<think>\n`: the student continues the thought


def _after_answer(tokenizer, turn: str, end: str, eot: int | None) -> str:
    """The template's text after the answer `end` in its rendering of the final turn (`turn`): what
    precedes the turn's end-of-turn token, less trailing whitespace, must end with the answer."""
    at = len(turn)
    if eot is not None:
        enc = tokenizer(turn, add_special_tokens=False, return_offsets_mapping=True)
        at = next((a for i, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]) if i == eot), at)
    head = turn[:at].rstrip()
    if not end or not head.endswith(end):
        raise MaskError(f"the chat template does not render the final answer where it belongs; {FIX_TEMPLATE}")
    return turn[len(head):]


def prompt_and_completion(tokenizer, messages: list[dict], template_kwargs: dict | None = None) -> tuple[str, str]:
    """(generation prompt, the final assistant turn as the model writes it after that prompt, through
    the template's end of turn): what a scorer of a reply must see, on every template the masks handle."""
    messages, thought, answer = final_turn(messages)
    return _completion(tokenizer, messages, thought, answer, template_kwargs or {}, end_of_turn(tokenizer))


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int,
                    template_kwargs: dict | None = None, *, eot: int | None = None,
                    all_turns: bool = False) -> dict | None:
    """input_ids and labels of one conversation (labels IGNORE outside the trained tokens), plus
    `truncated` (trained tokens were cut at `max_length`) and `ended` (the end-of-turn token was kept).

    Returns None when the prompt alone does not fit in `max_length`; raises MaskError when the
    template cannot be masked exactly. `eot`: the template's end-of-turn token, when already known.
    `all_turns`: every assistant turn is trained, not only the final one.
    """
    kwargs = template_kwargs or {}
    messages, thought, answer = final_turn(messages)
    eot = end_of_turn(tokenizer) if eot is None else eot
    if eot is None:
        raise MaskError("the chat template ends an assistant turn with no special token, so the student could not "
                        "learn where to stop; use a checkpoint whose chat template ends turns with its end-of-turn "
                        "token (such as <|im_end|>)")
    if has_generation_markers(tokenizer):
        ids, labels = _marked(tokenizer, messages, eot, kwargs, all_turns)
    else:
        prompt, completion = _completion(tokenizer, messages, thought, answer, kwargs, eot)
        prompt_ids, prompt_labels = _prompt(tokenizer, messages[:-1], prompt, eot, kwargs, all_turns)
        answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if eot not in answer_ids:
            raise MaskError(f"the chat template does not end the assistant turn with {tokenizer.decode([eot])}; "
                            f"{FIX_TEMPLATE}")
        stop = len(answer_ids) - answer_ids[::-1].index(eot)  # through the end-of-turn token, not the newline after
        ids = prompt_ids + answer_ids
        labels = prompt_labels + answer_ids[:stop] + [IGNORE] * (len(answer_ids) - stop)
    _check_trained(tokenizer, ids, labels, thought, answer, eot)
    trained = [i for i, t in enumerate(labels) if t != IGNORE]
    if trained[0] >= max_length:
        return None
    return {"input_ids": ids[:max_length], "labels": labels[:max_length],
            "truncated": trained[-1] >= max_length, "ended": trained[-1] < max_length}


def _prompt(tokenizer, earlier: list[dict], prompt: str, eot: int, kwargs: dict,
            all_turns: bool) -> tuple[list[int], list[int]]:
    """Ids and labels of the prompt: all IGNORE, or with `all_turns` each earlier assistant turn trained
    as the prompt renders it, from the first token at or after where the turn's text starts through
    its end-of-turn token."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], [IGNORE] * len(enc["input_ids"])
    if not all_turns:
        return ids, labels
    for i in (i for i, m in enumerate(earlier) if m["role"] == "assistant"):
        start = _turn_start(tokenizer, earlier[:i], prompt, kwargs)
        first = next(k for k, (a, _) in enumerate(enc["offset_mapping"]) if a >= start)
        stop = next((k for k in range(first, len(ids)) if ids[k] == eot), None)
        if stop is None:
            raise MaskError(f"the chat template does not end assistant turn {i + 1} with {tokenizer.decode([eot])}; "
                            f"{FIX_TEMPLATE}")
        labels[first:stop + 1] = ids[first:stop + 1]
    return ids, labels


def _turn_start(tokenizer, before: list[dict], prompt: str, kwargs: dict) -> int:
    """Where an earlier assistant turn's text starts in `prompt`: after as much of its own generation
    prompt as the conversation renders too (R1 opens `<think>` there and strips the thought from the
    turn; Qwen3 with enable_thinking=False pre-fills an empty thought that earlier turns lack)."""
    head = render(tokenizer, before, True, **kwargs)
    n = next((k for k, (a, b) in enumerate(zip(head, prompt)) if a != b), min(len(head), len(prompt)))
    if n < len(render(tokenizer, before, False, **kwargs)):
        raise MaskError("the chat template renders earlier turns differently inside the conversation, so "
                        f"train.all_turns cannot find them; {FIX_TEMPLATE}")
    return n


def _marked(tokenizer, messages: list[dict], eot: int, kwargs: dict, all_turns: bool) -> tuple[list[int], list[int]]:
    """Ids and labels from the template's `{% generation %}` marks, each marked span extended over the
    end-of-turn token right after it (templates often leave it outside the block); without
    `all_turns`, the last span only."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        **kwargs)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    for i in range(len(ids) - 1):
        if mask[i] and not mask[i + 1] and ids[i + 1] == eot:
            mask[i + 1] = 1
    if not all_turns and any(mask):
        start = max(i for i, m in enumerate(mask) if m)
        while start > 0 and mask[start - 1]:
            start -= 1
        mask = [0] * start + mask[start:]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def _check_trained(tokenizer, ids: list[int], labels: list[int], thought: str | None, answer: str, eot: int) -> None:
    """The last trained span must hold the thought and the answer and end at the end-of-turn token."""
    trained = [i for i, t in enumerate(labels) if t != IGNORE]
    if not trained:
        raise MaskError(f"the chat template marks no assistant tokens; {FIX_TEMPLATE}")
    start = trained[-1]
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    text = tokenizer.decode(ids[start:trained[-1] + 1], skip_special_tokens=False)
    ok = ids[trained[-1]] == eot and answer.strip() in text and (not thought or (thought in text and THINK_CLOSE in text))
    if not ok:
        raise MaskError("the chat template's assistant turn does not hold the row's thought and answer followed by "
                        f"its end-of-turn token; {FIX_TEMPLATE}")


def encode_each(tokenizer, rows: list[dict], max_length: int, first: int = 1,
                all_turns: bool = False) -> list[dict | None]:
    """Each row encoded (`encode_messages`), None where its prompt alone is longer than `max_length`;
    JobError naming the row (counted from `first`) when a row or the template cannot be masked."""
    from pai_distil.core.contract import JobError

    out, eot = [], end_of_turn(tokenizer)
    for n, row in enumerate(rows, first):
        try:
            kwargs = row.get("chat_template_kwargs")
            out.append(encode_messages(tokenizer, row["messages"], max_length, kwargs, eot=eot,
                                       all_turns=all_turns))
        except MaskError as err:
            raise JobError(f"training row {n}: {err}") from None
    return out


def check_truncation(rows: int, kept: int, cut: int, lost: int, max_length: int, max_truncated: float = 0.05,
                     log=print) -> None:
    """The truncation report of `rows` encoded rows: `kept` of them fit (the others' prompts alone are
    longer), `cut` were cut at `max_length`, `lost` kept rows lost their end-of-turn token (a student
    trained on them learns not to stop). Warns above 1 %; raises JobError above `max_truncated`."""
    from pai_distil.core.contract import JobError

    dropped = rows - kept
    if not kept:
        raise JobError(f"every training row is longer than train.max_length={max_length}; raise it")
    share = (cut + dropped) / rows
    report = (f"truncation: {cut} of {rows} rows cut at train.max_length={max_length}, {lost + dropped} lost their "
              f"end-of-turn token" + (f", {dropped} dropped (the prompt alone is longer)" if dropped else ""))
    if share > max_truncated:
        raise JobError(f"{share:.1%} of the training rows are longer than train.max_length={max_length} "
                       f"({report}); raise train.max_length or train.max_truncated (now {max_truncated})")
    log(("warning: " if share > WARN_TRUNCATED else "") + report)


def encode_rows(tokenizer, rows: list[dict], max_length: int, max_truncated: float = 0.05, log=print) -> list[dict]:
    """Every row encoded that fits, with the truncation report (`check_truncation`); JobError when a
    row or the template cannot be masked."""
    out = [e for e in encode_each(tokenizer, rows, max_length) if e is not None]
    check_truncation(len(rows), len(out), sum(e["truncated"] for e in out), sum(not e["ended"] for e in out),
                     max_length, max_truncated, log)
    return out


def marked_example(tokenizer, ids: list[int], labels: list[int], width: int = 240) -> str:
    """One encoded row decoded as the student sees it, the trained text between `[[` and `]]`; each
    stretch longer than `width` characters keeps its start and end around a count of what was cut,
    so a job log shows exactly what is trained without a whole chain."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == IGNORE) != (labels[start] == IGNORE):
            text = _middle(tokenizer.decode(ids[start:i], skip_special_tokens=False), width)
            parts.append(text if labels[start] == IGNORE else f"[[{text}]]")
            start = i
    return "".join(parts)


def _middle(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    keep = width // 2
    return f"{text[:keep]} …[{len(text) - 2 * keep} characters]… {text[-keep:]}"


def log_example(tokenizer, example: dict, say) -> None:
    """Log `marked_example` of one encoded row (rank 0 passes its logger, the other ranks a no-op)."""
    say("example training row as the student sees it, trained tokens in [[ ]]:\n"
        + marked_example(tokenizer, list(example["input_ids"]), list(example["labels"])))


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training (labels padded with IGNORE)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
