"""The synthetic world's judge: exact correctness, Reasoning Verbosity and Cognitive Difficulty.

It answers the rubric questions of `pai_distil.core.judging` (what the score stage sends to any LLM
judge) exactly, so the stage's client code, parsing and retries are exercised end to end.
"""

from __future__ import annotations

from pai_distil.core import oracle as teacher, world

# Cognitive difficulty of each level on the 0-9 scale: the reasoning a solver must carry.
LEVEL_CD: dict[int, int] = {1: 2, 2: 5, 3: 8}


SECTIONS = ("problem", "answer", "thought", "solution")
_HEADINGS = ("Problem:\n", "\n\nReference answer:\n", "\n\nReasoning:\n", "\n\nSolution:\n")


def sections(user: str) -> dict[str, str] | None:
    """The rubric question's sections, each up to the next heading; None when a heading is missing.

    Found with `str.find`, one pass: a lazy regex over the same headings rescanned the rest of the
    prompt from every `Problem:` in it, quadratic in a prompt that anyone can send the server.
    """
    starts, at = [], 0
    for heading in _HEADINGS:
        at = user.find(heading, at)
        if at < 0:
            return None
        starts.append((at, at + len(heading)))
        at += len(heading)
    ends = [start for start, _ in starts[1:]] + [len(user)]
    return {name: user[body:end] for name, (_, body), end in zip(SECTIONS, starts, ends)}


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
    m = sections(user)
    if m is None:
        return None
    problem = world.parse_problem(m["problem"])
    if problem is None:
        return None
    if dimension == "correct":
        return int(world.verify(m["solution"], problem.answer))
    if dimension == "rv":
        return rv_of(problem, m["thought"])
    return cd_of(problem)
