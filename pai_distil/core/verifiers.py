"""Answer verification, chosen per row: the one place every stage asks "is it right?".

A row names its verifier in `verifier`, or implies it by its `domain`:

| verifier          | domains                          | the answer                                   |
|-------------------|----------------------------------|----------------------------------------------|
| `synthetic`       | synthetic (or no domain)         | exact final `\\boxed{}` of the synthetic world |
| `exact`           | exact                            | final `\\boxed{}` (or last line) equal as text |
| `math`            | math, and any other free-form    | mathematically equivalent (math-verify)      |
| `multiple_choice` | multiple_choice, choice, mcq     | the chosen letter                            |
| `code`            | code                             | a program passing every test case (sandbox)  |

A row of another domain (science, puzzle, …) is checked as multiple choice when it has
`choices`, as code when it has `tests`, and as math otherwise.
"""

from __future__ import annotations

import re

from pai_distil.core import world
from pai_distil.core.verify import Verdict
from pai_distil.core.verify.text import final_part, last_boxed

VERIFIERS = ("synthetic", "exact", "math", "multiple_choice", "code")
ALIASES = {"choice": "multiple_choice", "mcq": "multiple_choice", "multiple-choice": "multiple_choice",
           "mc": "multiple_choice"}


def canonical(name: str) -> str:
    """A verifier name, aliases resolved; ValueError naming the choices for an unknown one."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; choose one of {', '.join(VERIFIERS)}")
    return key


def verifier_for(row: dict) -> str:
    """Which verifier judges `row`: its `verifier`, else its `domain`, else what it carries."""
    if row.get("verifier"):
        return canonical(row["verifier"])
    domain = str(row.get("domain") or world.DOMAIN).strip().lower()
    domain = ALIASES.get(domain, domain)
    if domain in VERIFIERS:
        return domain
    if row.get("choices"):
        return "multiple_choice"
    if row.get("tests"):
        return "code"
    return "math"


def check(row: dict, response: str, sandbox=None) -> Verdict:
    """The verdict on `response` (a full answer, `<think>` block included or not) to `row`.

    `sandbox` (verify.sandbox.Limits) bounds each run of a code answer (default: sandbox.DEFAULT).
    """
    kind = verifier_for(row)
    answer = "" if row.get("answer") is None else str(row["answer"])
    if kind == "synthetic":
        return Verdict(world.verify(response, answer), world.extract_answer(final_part(response)))
    if kind == "exact":
        got = exact_answer(response)
        return Verdict(got is not None and _squash(got) == _squash(answer), got)
    if kind == "math":
        from pai_distil.core.verify import math_answer

        return math_answer.check(answer, response)
    if kind == "multiple_choice":
        from pai_distil.core.verify import choice

        return choice.check(answer, response, row.get("choices"))
    from pai_distil.core.verify import code

    meta = row.get("meta") or {}
    return code.check(response, row.get("tests") or [], sandbox,
                      fn_name=row.get("fn_name") or meta.get("fn_name"))


def verify(row: dict, response: str) -> bool:
    """Whether `response` answers `row` correctly."""
    return check(row, response).correct


def extract(row: dict, response: str) -> str | None:
    """The final answer read from `response` without judging it (None: the response has none).

    Cheap for every verifier (code is not run), so stages can count unparseable answers.
    """
    kind = verifier_for(row)
    if kind == "synthetic":
        return world.extract_answer(final_part(response))
    if kind == "exact":
        return exact_answer(response)
    if kind == "math":
        from pai_distil.core.verify import math_answer

        return math_answer.extract(response)
    if kind == "multiple_choice":
        from pai_distil.core.verify import choice

        return choice.extract_letter(response, row.get("choices") or 4)
    from pai_distil.core.verify import code

    return code.extract_program(response)


def exact_answer(response: str) -> str | None:
    part = final_part(response)
    boxed = last_boxed(part)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in part.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
