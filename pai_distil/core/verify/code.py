"""Code answers: the program is read from the response and run against the row's test cases in
the sandbox, one run per case, reporting pass/fail per case.

Test cases are LiveCodeBench-shaped: {"input", "output", "testtype": "stdin" | "functional"}.
Only a case's input goes into the sandbox; its expected output stays here and is compared here.
stdin cases compare printed output line by line (trailing spaces ignored), token by token where
lines differ: integers and words exactly, decimals within 1e-6 where the expected token is one.
functional cases (LeetCode style) have the harness call `Solution().<fn_name>` or a top-level
`<fn_name>` with the input's JSON lines as arguments; its JSON result is compared here by type
and value: `true` is not `1`, an expected integer needs that integer, and only an expected
float allows a tolerance.
"""

from __future__ import annotations

import json
import math
import re

from pai_distil.core.verify.sandbox import Limits, run_python
from pai_distil.core.verify.text import final_part
from pai_distil.core.verify.verdict import Verdict

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_DECIMAL_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")
STOPS = {"timeout", "memory", "blocked", "output_limit"}  # after one of these, later cases are skipped
FLOAT_TOLERANCE = 1e-6  # relative and absolute, for decimals only


def extract_program(response: str) -> str | None:
    """The last ```python block of the final part (else its last fenced block); None when none."""
    blocks = _FENCE_RE.findall(final_part(response))
    if not blocks:
        return None
    python = [code for lang, code in blocks if lang.lower() in ("python", "python3", "py")]
    code = (python or [code for _, code in blocks])[-1]
    return code if code.strip() else None


def same_output(got: str, expected: str) -> bool:
    """Printed output equal up to trailing whitespace, or token by token where every token is equal
    but expected decimals, which may differ by FLOAT_TOLERANCE."""
    g = [line.rstrip() for line in got.strip().splitlines()]
    e = [line.rstrip() for line in expected.strip().splitlines()]
    if g == e:
        return True
    gt, et = got.split(), expected.split()
    return len(gt) == len(et) and all(a == b or _close_decimal(a, b) for a, b in zip(gt, et, strict=True))


def _close_decimal(got: str, expected: str) -> bool:
    if not _DECIMAL_RE.fullmatch(expected):
        return False  # integers and words compare exactly
    try:
        x, y = float(got), float(expected)
    except ValueError:
        return False
    return math.isfinite(x) and math.isclose(x, y, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def same_value(got, expected) -> bool:
    """JSON values equal by type and value; a tolerance only where `expected` is a float."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=FLOAT_TOLERANCE,
                                                              abs_tol=FLOAT_TOLERANCE)
    if isinstance(expected, list):
        return (isinstance(got, list) and len(got) == len(expected)
                and all(same_value(a, b) for a, b in zip(got, expected, strict=True)))
    if isinstance(expected, dict):
        return (isinstance(got, dict) and got.keys() == expected.keys()
                and all(same_value(got[k], expected[k]) for k in expected))
    return type(got) is type(expected) and got == expected


def _same_result(stdout: str, expected: str) -> bool:
    """The harness's result (the last line it printed) against the case's expected JSON."""
    lines = stdout.strip().splitlines()
    try:
        return bool(lines) and same_value(json.loads(lines[-1]), json.loads(expected))
    except json.JSONDecodeError:
        return False


def run_tests(program: str, tests: list[dict], limits: Limits | None = None, fn_name: str | None = None) -> list[dict]:
    """One result per case: {"case", "status", "seconds"}; status is pass, fail, timeout, error, memory,
    blocked, output_limit or skipped. Raises SandboxUnavailable when no sandbox runs here."""
    results: list[dict] = []
    stopped = None
    for i, case in enumerate(tests):
        if stopped:
            results.append({"case": i, "status": "skipped", "seconds": 0.0, "why": f"an earlier case hit {stopped}"})
            continue
        functional = case.get("testtype") == "functional"
        if functional and not fn_name:
            results.append({"case": i, "status": "error", "seconds": 0.0, "why": "functional test without fn_name"})
            continue
        run = run_python(program, str(case.get("input", "")), limits, fn_name if functional else None)
        status = run.status
        if status == "ok":
            expected = str(case.get("output", ""))
            ok = _same_result(run.stdout, expected) if functional else same_output(run.stdout, expected)
            status = "pass" if ok else "fail"
        result = {"case": i, "status": status, "seconds": run.seconds}
        if status not in ("pass", "fail") and run.stderr.strip():
            result["why"] = run.stderr.strip().splitlines()[-1][:200]
        results.append(result)
        if status in STOPS:
            stopped = status
    return results


def check(response: str, tests: list[dict], limits: Limits | None = None, fn_name: str | None = None) -> Verdict:
    program = extract_program(response)
    if program is None:
        return Verdict(False, None, {"cases": [], "why": "no code block in the final answer"})
    cases = run_tests(program, tests, limits, fn_name)
    passed = sum(c["status"] == "pass" for c in cases)
    details = {"cases": cases, "passed": passed, "total": len(cases)}
    return Verdict(bool(cases) and passed == len(cases), program, details)
