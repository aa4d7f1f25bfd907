"""The chain-of-thought text format, in one place: `<think>\\n…\\n</think>\\n\\n` then the answer.

Teachers (the synthetic oracle, served models whose reasoning is put back inline), CoT samples
turned into chat rows and the SFT data all write this; verifiers and readers split it again.
The exact bytes matter: the preset tokenizer is trained on the oracle's text and chat
templates (Qwen3's) render assistant turns the same way.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def think_block(thought: str, answer: str) -> str:
    """`<think>\\n{thought}\\n</think>\\n\\n{answer}`: a response with its chain of thought inline."""
    return f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n{answer}"


EMPTY_THOUGHT = think_block("", "")  # a direct answer's empty thought, as Qwen3 writes it

# Qwen3's soft switches: appended to a user turn, they turn thinking on or off for that reply.
SOFT_THINK, SOFT_NO_THINK = " /think", " /no_think"


def split_thought(text: str) -> tuple[str, str]:
    """Split a response into (thought, solution) on the `<think>…</think>` block."""
    text = text or ""
    if THINK_CLOSE in text:
        head, _, tail = text.partition(THINK_CLOSE)
        return head.replace(THINK_OPEN, "", 1).strip(), tail.strip()
    if text.lstrip().startswith(THINK_OPEN):
        return text.replace(THINK_OPEN, "", 1).strip(), ""  # truncated inside the chain
    return "", text.strip()
