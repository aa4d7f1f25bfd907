"""LLM-as-judge: the rubric prompts the score stage sends, and robust parsing of the score.

Judges answer in many shapes ("Score: 7", "7/9", "<score>7</score>", a sentence around the
number); `parse_score` reads them all and returns None — unscored, never a crash — for an
out-of-range number, several competing numbers or none at all.
"""

from __future__ import annotations

import re

from pai_distil.core.think import THINK_CLOSE, THINK_OPEN

DIMENSIONS = ("correct", "rv", "cd")

RUBRICS: dict[str, str] = {
    "correct": (
        "You grade solutions. Decide whether the final answer of the solution below is correct for the "
        "problem. The reference answer is given. Reply with `Score: 1` if it is correct and `Score: 0` if not."
    ),
    "rv": (
        "You rate REASONING VERBOSITY: how long and detailed the reasoning below is for its problem, on a "
        "0-9 scale. 0: no reasoning at all; 2: terse equations only; 4: one short line per step; 6: every "
        "step explained; 9: exhaustive, with checks, re-reading and summaries. Reply with `Score: N`."
    ),
    "cd": (
        "You rate COGNITIVE DIFFICULTY: the level of reasoning needed to solve the problem below, on a "
        "0-9 scale. 0: a single recalled fact; 5: a few dependent steps; 9: a long chain of dependent steps "
        "where any slip changes the answer. Reply with `Score: N`."
    ),
}

SCALES: dict[str, tuple[int, int]] = {"correct": (0, 1), "rv": (0, 9), "cd": (0, 9)}


def judge_prompt(dimension: str, problem: str, answer: str, thought: str, solution: str) -> list[dict]:
    """The chat messages of one rubric question."""
    user = (f"Problem:\n{problem}\n\nReference answer:\n{answer}\n\n"
            f"Reasoning:\n{thought or '(none)'}\n\nSolution:\n{solution}")
    return [{"role": "system", "content": RUBRICS[dimension]}, {"role": "user", "content": user}]


def which_dimension(system: str) -> str | None:
    """Which rubric a system prompt is (how the synthetic server recognises a judge request)."""
    for dim, rubric in RUBRICS.items():
        if system.strip().startswith(rubric[:40]):
            return dim
    return None


_THINK = re.compile(re.escape(THINK_OPEN) + ".*?" + re.escape(THINK_CLOSE), re.S)
_PATTERNS = [
    re.compile(r"<score>\s*(-?\d+)\s*</score>", re.I),
    re.compile(r"\bscore\s*(?:is|of)?\s*[:=]?\s*\**\s*(-?\d+)\b", re.I),
    re.compile(r"(?<![\d.])(-?\d+)\s*/\s*\d+\b"),
    re.compile(r"(?<![\d.])(-?\d+)\s+out of\s+\d+\b", re.I),
    re.compile(r"\brating\s*[:=]?\s*(-?\d+)\b", re.I),
]
_INTEGER = re.compile(r"(?<![\w.])(-?\d+)(?![\w.]*\d)")


def parse_score(text: str | None, low: int, high: int) -> int | None:
    """The judge's integer score in [low, high], or None when it cannot be read with confidence."""
    if not text:
        return None
    text = _THINK.sub(" ", text)
    for pattern in _PATTERNS:
        found = pattern.findall(text)
        if found:
            value = int(found[-1])
            return value if low <= value <= high else None
    numbers = {int(n) for n in _INTEGER.findall(text)}
    if len(numbers) != 1:  # none, or competing numbers: do not guess
        return None
    value = numbers.pop()
    return value if low <= value <= high else None
