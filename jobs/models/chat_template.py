"""What a checkpoint's chat template does, found by rendering it rather than by its name.

Qwen3's hybrid template, Qwen2.5's (no thinking switch) and DeepSeek-R1-Distill's (strips the
thought, opens `<think>` in the generation prompt) differ in ways that decide where a turn ends,
which tokens the student must learn and whether `enable_thinking` means anything. Rendering a
probe conversation answers those questions for any template, including ones we have never seen.
"""

from __future__ import annotations

import json
import re
import weakref
from pathlib import Path

from pai_distil.core import think
from pai_distil.core.think import SOFT_NO_THINK, SOFT_THINK, THINK_CLOSE, THINK_OPEN
from pai_distil.core.thinking_switch import SOFT_SWITCH_FILE

_PROBE_USER, _PROBE_ANSWER = "ping", "pong"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
OPENED_THINK = re.compile(re.escape(THINK_OPEN) + r"\s*$")  # a generation prompt that opened the thought


def render(tokenizer, messages: list[dict], generation_prompt: bool, **template_kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         **template_kwargs)


_EOT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its template, end of turn)


def end_of_turn(tokenizer) -> int | None:
    """The special token the template closes an assistant turn with (`<|im_end|>` for Qwen, whatever
    the tokenizer's eos is), or None when a turn ends with no special token. Found once per tokenizer
    and template: scorers ask for it at every row."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    known = _EOT.get(tokenizer)
    if known is None or known[0] != template:
        known = _EOT[tokenizer] = (template, _find_end_of_turn(tokenizer))
    return known[1]


def _find_end_of_turn(tokenizer) -> int | None:
    convo = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        text = render(tokenizer, convo, False)
    except Exception:  # noqa: BLE001 - jinja raises many kinds; a template we cannot render has no known end
        return None
    tail = text[text.rfind(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def honours_enable_thinking(tokenizer) -> bool:
    """True when `enable_thinking=False` changes the generation prompt (Qwen3's template pre-fills an
    empty thought); Qwen2.5's ignores the flag, so both modes would be one."""
    convo = [{"role": "user", "content": _PROBE_USER}]
    return render(tokenizer, convo, True, enable_thinking=True) != render(tokenizer, convo, True, enable_thinking=False)


def thinking_switch(tokenizer, checkpoint: str | Path | None = None) -> str | None:
    """How `enable_thinking: false` is honoured by a checkpoint: "template" when its chat template
    renders another prompt (Qwen3's), "soft" when the template ignores the flag but the checkpoint
    was trained to read `/no_think` in the user turn (SOFT_SWITCH_FILE, written by adaptive-thinking),
    None when nothing switches: thinking off would silently be thinking on, so callers refuse it."""
    if getattr(tokenizer, "chat_template", None) and honours_enable_thinking(tokenizer):
        return "template"
    if checkpoint is not None and (Path(checkpoint) / SOFT_SWITCH_FILE).is_file():
        return "soft"
    return None


def record_soft_switch(checkpoint: str | Path) -> None:
    """Mark a checkpoint as trained with `/no_think` user turns, for `thinking_switch`."""
    (Path(checkpoint) / SOFT_SWITCH_FILE).write_text(json.dumps({"off": SOFT_NO_THINK, "on": SOFT_THINK}) + "\n")


def switch_thinking_off(messages: list[dict]) -> list[dict]:
    """`messages` with the soft switch `/no_think` at the end of the last user turn (as trained)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return messages
    out = [dict(m) for m in messages]
    out[last]["content"] += SOFT_NO_THINK
    return out


def has_generation_markers(tokenizer) -> bool:
    """A training template (`{% generation %}` … `{% endgeneration %}`) marks the assistant tokens itself."""
    return bool(_GENERATION_TAG.search(getattr(tokenizer, "chat_template", None) or ""))


def split_thought(message: dict) -> tuple[str | None, str]:
    """(thought, answer) of an assistant message: `reasoning_content` (vLLM, DeepSeek, OmniThought rows)
    or a `<think>…</think>` block at the start of `content`; thought None when there is neither."""
    content = message.get("content") or ""
    if message.get("reasoning_content") is not None:
        return message["reasoning_content"].strip("\n"), content.lstrip("\n")
    if THINK_CLOSE in content:
        head, _, tail = content.partition(THINK_CLOSE)
        return head.split(THINK_OPEN)[-1].strip("\n"), tail.lstrip("\n")
    return None, content


def think_block(thought: str | None, answer: str) -> str:
    """The assistant text as Qwen3 writes it: `<think>\\n…\\n</think>\\n\\n` then the answer."""
    return answer if thought is None else think.think_block(thought, answer)
