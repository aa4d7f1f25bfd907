"""Reading the final answer out of a response: the `<think>` split and the last `\\boxed{…}`."""

from __future__ import annotations

import re

from pai_distil.core.think import split_thought

__all__ = ["split_thought", "last_boxed", "final_part"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (nested braces allowed) or `\\boxed 5`; None when there is none
    or the last box is never closed (a truncated answer)."""
    found = None
    for m in _BOX_RE.finditer(text or ""):
        if m.group(1) is None:  # \boxed 5
            tail = re.match(r"[^\s$.,;]+", text[m.end():])
            found = tail.group(0) if tail else found
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found = text[m.end():i - 1].strip() if depth == 0 else None
    return found


def final_part(response: str) -> str:
    """The part of a response after its `<think>` block: where the final answer must be.

    A response cut off inside `<think>` has no final part, so an answer the model only mused
    about never counts.
    """
    return split_thought(response)[1]
