"""The synthetic world's judge: exact correctness, Reasoning Verbosity and Cognitive Difficulty.

It answers the rubric questions of `pai_distil.core.judging` (what the score stage sends to any LLM
judge) exactly, so the stage's client code, parsing and retries are exercised end to end.
"""

from __future__ import annotations

import re

from pai_distil.core import oracle as teacher, world

# Cognitive difficulty of each level on the 0-9 scale: the reasoning a solver must carry.
LEVEL_CD: dict[int, int] = {1: 2, 2: 5, 3: 8}


_SECTION = re.compile(r"Problem:\n(?P<problem>.*?)\n\nReference answer:\n(?P<answer>.*?)\n\n"
                      r"Reasoning:\n(?P<thought>.*?)\n\nSolution:\n(?P<solution>.*)", re.S)


def rv_of(problem: world.Problem, thought: str) -> int:
    """The oracle's verbosity level whose chain for this problem is closest in length."""
    if not thought.strip() or thought.strip() == "(none)":
        return 0
    n = len(thought.strip())
    lengths = {rv: len(teacher.write_thought(problem, rv)) for rv in range(1, 10)}
    return min(lengths, key=lambda rv: (abs(lengths[rv] - n), rv))


def cd_of(problem: world.Problem) -> int:
    return LEVEL_CD.get(problem.level, 9)


def score(dimension: str, user: str) -> int | None:
    """The exact score of a rubric question about a synthetic problem; None if it is not one."""
    m = _SECTION.search(user)
    if not m:
        return None
    problem = world.parse_problem(m["problem"])
    if problem is None:
        return None
    if dimension == "correct":
        return int(world.verify(m["solution"], problem.answer))
    if dimension == "rv":
        return rv_of(problem, m["thought"])
    return cd_of(problem)
