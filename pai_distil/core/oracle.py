"""The oracle teacher: writes a chain of thought for a synthetic problem at a chosen verbosity.

Reasoning Verbosity (RV) 0-9 controls how much the chain says, every level longer than the one
below: 0 no chain at all; 1 the values only; 2 one equation per line; 3 numbered steps; 4 the
same with the final value; 5 steps that restate the operation and the reduction modulo m;
6 an opening line; 7 a check per step; 8 a re-reading of the problem and a last check; 9 a
summary after every step. An optional error rate makes the teacher slip on one step now and
then, so that verification has something to reject.
"""

from __future__ import annotations

import random

from pai_distil.core.think import think_block
from pai_distil.core.world import Problem, Step, apply

DEFAULT_RV = 4


def _inverse_check(step: Step, m: int) -> str:
    if step.symbol == "+":
        return f"Check: {step.after} - {step.operand} = {(step.after - step.operand) % m}, which is {step.before}. Correct."
    if step.symbol == "-":
        return f"Check: {step.after} + {step.operand} = {(step.after + step.operand) % m}, which is {step.before}. Correct."
    return f"Check: {step.before} * {step.operand} = {step.raw}, and {step.raw} mod {m} is {step.after}. Correct."


def _step_lines(i: int, step: Step, rv: int, m: int) -> list[str]:
    eq = f"{step.before} {step.symbol} {step.operand} = {step.after}"
    if rv == 2:
        return [eq]
    if rv <= 4:
        return [f"Step {i}: {eq}."]
    lines = [
        f"Step {i}: {step.op} {step.operand}. {step.before} {step.symbol} {step.operand} = {step.raw}, "
        f"and {step.raw} mod {m} is {step.after}."
    ]
    if rv >= 7:
        lines.append(_inverse_check(step, m))
    if rv >= 9:
        lines.append(f"So after step {i} the value is {step.after}.")
    return lines


def write_thought(problem: Problem, rv: int) -> str:
    """The chain of thought for `problem` at verbosity `rv` (no errors)."""
    return render_thought(problem, problem.steps(), rv)


def render_thought(problem: Problem, steps: list[Step], rv: int) -> str:
    rv = max(0, min(9, int(rv)))
    if rv == 0:
        return ""
    if rv == 1:
        return " -> ".join(str(v) for v in [problem.start] + [s.after for s in steps])
    lines: list[str] = []
    if rv >= 6:
        lines.append(f"We start with {problem.start} and apply {len(steps)} operation{'s' if len(steps) > 1 else ''} modulo {problem.modulus}.")
    if rv >= 8:
        ops = ", ".join(f"{name} {operand}" for name, operand in problem.ops)
        lines.append(f"Let me re-read the problem: {ops}.")
    for i, step in enumerate(steps, 1):
        lines.extend(_step_lines(i, step, rv, problem.modulus))
    if rv >= 4:
        lines.append(f"The final value is {steps[-1].after}.")
    if rv >= 8:
        lines.append(f"Wait, let me make sure I used every operation. I applied {len(steps)} of {len(problem.ops)}. Good.")
    return "\n".join(lines)


def solution_text(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def answer_with_errors(problem: Problem, rng: random.Random, error_rate: float) -> list[Step]:
    """The problem's steps, with one step miscalculated with probability `error_rate`."""
    steps = problem.steps()
    if error_rate <= 0 or rng.random() >= error_rate:
        return steps
    bad = rng.randrange(len(steps))
    out: list[Step] = []
    value = problem.start
    for i, s in enumerate(steps):
        after = s.after if i != bad else (s.after + rng.randint(1, problem.modulus - 1)) % problem.modulus
        if i > bad:  # later steps propagate the slip
            after = apply(s.op, value, s.operand, problem.modulus)
        out.append(Step(s.op, s.operand, value, after))
        value = after
    return out


def respond(problem: Problem, rv: int = DEFAULT_RV, rng: random.Random | None = None, error_rate: float = 0.0) -> str:
    """A full teacher response: `<think>chain</think>` then the boxed answer."""
    steps = answer_with_errors(problem, rng or random.Random(0), error_rate)
    thought = render_thought(problem, steps, rv)
    return think_block(thought, solution_text(str(steps[-1].after)))
