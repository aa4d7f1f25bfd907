"""Mathematical equivalence of final answers, by math-verify (LaTeX and plain forms, fractions,
intervals, sets, units and percent signs) with two small fallbacks: numeric comparison of
constants sympy does not simplify (e^{i\\pi}), and normalised text for answers that are words.

Only the last `\\boxed{}` of the final part counts, so a response cannot list every candidate in
boxes; without a box, math-verify's anchors ("the final answer is …") and last expression apply.
"""

from __future__ import annotations

import cmath
import logging
import re
import threading
from functools import lru_cache

from pai_distil.core.verify.text import final_part, last_boxed
from pai_distil.core.verify.verdict import Verdict

TIMEOUT_S = 5  # per parse / comparison; math-verify enforces it with SIGALRM (main thread only)
_TEXT_MACRO_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname)\s*\{([^{}]*)\}")

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every unparseable string


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _configs(boxed_first: bool):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0 if boxed_first else 50), ExprExtractionConfig()]


@lru_cache(maxsize=4096)
def parse_gold(answer: str) -> tuple:
    """The reference answer parsed once (references repeat for every sample of a problem)."""
    from math_verify import parse

    text = answer.strip()
    if len(text) > 1 and text[0] == text[-1] == "$":
        text = text.strip("$")
    source = text if "\\boxed" in text else f"\\boxed{{{text}}}"
    return tuple(parse(source, _configs(True), parsing_timeout=_timeout()))


def extract(response: str) -> str | None:
    """The final answer as written: the last box of the final part, else math-verify's pick."""
    part = final_part(response)
    boxed = last_boxed(part)
    if boxed is not None:
        return boxed or None
    parsed = _parse_pred(part)
    return str(parsed[-1]) if parsed else None


def _parse_pred(part: str) -> list:
    from math_verify import parse

    boxed = last_boxed(part)
    source = f"\\boxed{{{boxed}}}" if boxed is not None else part
    if not source.strip() or boxed == "":
        return []
    return parse(source, _configs(True), parsing_timeout=_timeout())


def check(answer: str, response: str) -> Verdict:
    from math_verify import verify

    part = final_part(response)
    extracted = extract(response)
    if extracted is None:
        return Verdict(False, None)
    gold, pred = list(parse_gold(str(answer))), _parse_pred(part)
    if gold and pred and verify(gold, pred, allow_set_relation_comp=True, timeout_seconds=_timeout()):
        return Verdict(True, extracted)
    if gold and pred and _numeric_equal(gold[0], pred[0]):
        return Verdict(True, extracted)
    return Verdict(_normalise(str(answer)) == _normalise(extracted) != "", extracted)


def _numeric_equal(a, b) -> bool:
    """Constants that sympy leaves unsimplified (e^{i\\pi}, nested radicals) compared as numbers."""
    try:
        import sympy

        if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
            return False
        a, b = (e.subs({s: sympy.I for s in e.free_symbols if s.name == "i"}) for e in (a, b))  # `i` read as a variable
        if a.free_symbols or b.free_symbols:
            return False
        x, y = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
    except (TypeError, ValueError, AttributeError, RecursionError):
        return False
    if not all(cmath.isfinite(v) for v in (x, y)):
        return False
    return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))


def _normalise(text: str) -> str:
    """Text answers ("\\text{Evelyn}", "Evelyn.") compared without markup, spaces or case."""
    text = text.strip().strip("$")
    for _ in range(3):
        text = _TEXT_MACRO_RE.sub(r"\1", text)
    return re.sub(r"[\s.{}\\]+", "", text).lower()
