"""The synthetic reasoning world: seedable problems with graded difficulty and an exact verifier.

A problem is a chain of operations modulo 10 or 100 ("Start with 7. Add 5, then multiply by 3.
Work modulo 10."). Difficulty grows with the number of steps a solver has to carry in order and
with the size of the numbers: level 1 is one single-digit step, level 2 a chain of three, level 3
three steps on two-digit numbers (with carries), which can only be solved step by step.
Everything is pure Python: the client, the teacher server and the jobs share it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pai_distil.core.think import split_thought

DOMAIN = "synthetic"

# Difficulty level -> (number of operations, modulus). Level 1 is a single lookup; level 3 needs
# a chain with two-digit arithmetic.
LEVELS: dict[int, tuple[int, int]] = {1: (1, 10), 2: (3, 10), 3: (3, 100)}
LEVEL_STEPS: dict[int, int] = {lv: steps for lv, (steps, _) in LEVELS.items()}

# name in the problem text -> symbol in the chain of thought
OPERATIONS: dict[str, str] = {"add": "+", "subtract": "-", "multiply by": "*"}


def apply(op: str, a: int, b: int, modulus: int) -> int:
    sym = OPERATIONS[op]
    return (a + b if sym == "+" else a - b if sym == "-" else a * b) % modulus


def operand_range(op: str, modulus: int) -> tuple[int, int]:
    """Operands are single digits modulo 10; modulo 100, two digits (multipliers stay single)."""
    if modulus == 10 or op == "multiply by":
        return (1, 9) if modulus == 10 else (2, 9)
    return (11, 99)


@dataclass(frozen=True)
class Step:
    op: str  # key of OPERATIONS
    operand: int
    before: int
    after: int

    @property
    def symbol(self) -> str:
        return OPERATIONS[self.op]

    @property
    def raw(self) -> int:
        """The result before reduction modulo 10 (used by verbose chains)."""
        a, b = self.before, self.operand
        return {"+": a + b, "-": a - b, "*": a * b}[self.symbol]


@dataclass(frozen=True)
class Problem:
    id: str
    level: int
    start: int
    ops: tuple[tuple[str, int], ...]
    modulus: int = 10

    @property
    def text(self) -> str:
        parts = [f"{name} {operand}" for name, operand in self.ops]
        chain = ", then ".join(parts)
        return f"Start with {self.start}. {chain[0].upper()}{chain[1:]}. Work modulo {self.modulus}. What is the result?"

    def steps(self) -> list[Step]:
        value, out = self.start, []
        for name, operand in self.ops:
            after = apply(name, value, operand, self.modulus)
            out.append(Step(name, operand, value, after))
            value = after
        return out

    @property
    def answer(self) -> str:
        return str(self.steps()[-1].after)

    def to_row(self) -> dict:
        """The problem in the docs/architecture.md problem format."""
        return {
            "id": self.id,
            "problem": self.text,
            "answer": self.answer,
            "domain": DOMAIN,
            "meta": {"level": self.level, "start": self.start, "ops": [list(o) for o in self.ops],
                     "modulus": self.modulus},
        }


def make_problem(rng: random.Random, level: int, pid: str) -> Problem:
    if level not in LEVELS:
        raise ValueError(f"level {level} is not one of {sorted(LEVELS)}")
    n_ops, modulus = LEVELS[level]
    ops = []
    for _ in range(n_ops):
        name = rng.choice(list(OPERATIONS))
        ops.append((name, rng.randint(*operand_range(name, modulus))))
    return Problem(id=pid, level=level, start=rng.randint(0, modulus - 1), ops=tuple(ops), modulus=modulus)


def generate_problems(n: int, seed: int, levels: list[int] | None = None, prefix: str = "p") -> list[Problem]:
    """`n` problems drawn from `levels` in turn (round robin: a repeated level weighs more), reproducible
    from `seed`."""
    levels = levels or sorted(LEVEL_STEPS)
    rng = random.Random(seed)
    return [make_problem(rng, levels[i % len(levels)], f"{prefix}{seed}-{i:06d}") for i in range(n)]


# Bounded (a number of at most 18 digits, operations of at most 2000 characters and no period): the
# search is linear in the prompt, which a server reads from anyone (a 224 KB prompt took 26 s unbounded).
_PROBLEM_RE = re.compile(r"Start with (\d{1,18})\. ([^.\n]{1,2000})\. Work modulo (\d{1,18})\.")
MAX_DIGITS = 18
_OP_RE = re.compile(r"(add|subtract|multiply by) (\d+)")


def parse_problem(text: str, pid: str = "") -> Problem | None:
    """Recover a problem from its text (how the teacher server reads a user prompt)."""
    m = _PROBLEM_RE.search(text)
    if not m:
        return None
    found = _OP_RE.findall(m.group(2).lower())
    if not found or any(len(d) > MAX_DIGITS for _, d in found):
        return None
    ops = tuple((name, int(d)) for name, d in found)
    modulus = int(m.group(3))
    if modulus < 2:
        return None
    level = next((lv for lv, shape in LEVELS.items() if shape == (len(ops), modulus)), max(LEVELS))
    return Problem(id=pid, level=level, start=int(m.group(1)), ops=ops, modulus=modulus)


_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """The last `\\boxed{...}` of a response, stripped; None when there is none."""
    found = _BOXED_RE.findall(text or "")
    return found[-1].strip() if found else None


def verify(response: str, answer: str) -> bool:
    """Exact verifier: the final boxed answer equals the reference."""
    got = extract_answer(split_thought(response)[1])
    return got is not None and got == str(answer).strip()
