"""Code answers: the program is read from the response and run against the row's test cases in
the sandbox, one run per case, reporting pass/fail per case.

Test cases are LiveCodeBench-shaped: {"input", "output", "testtype": "stdin" | "functional"}.
stdin cases compare printed output line by line (trailing spaces ignored, numbers within 1e-6);
functional cases (LeetCode style) call `Solution().<fn_name>` or a top-level `<fn_name>` with
the input's JSON lines as arguments and compare the JSON result.
"""

from __future__ import annotations

import json
import math
import re

from .sandbox import DEFAULT, Limits, run_python
from .text import final_part
from .verdict import Verdict

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
STOPS = {"timeout", "memory", "blocked", "output_limit"}  # after one of these, later cases are skipped

PRELUDE = "from typing import *\nimport collections, heapq, itertools, math, bisect, functools\n"  # as LeetCode has
_DRIVER = '''

def __pai_distil_main():
    import json, sys
    args = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
    target = Solution().{fn} if "Solution" in globals() else globals()["{fn}"]
    print(json.dumps(target(*args)))

__pai_distil_main()
'''


def extract_program(response: str) -> str | None:
    """The last ```python block of the final part (else its last fenced block); None when none."""
    blocks = _FENCE_RE.findall(final_part(response))
    if not blocks:
        return None
    python = [code for lang, code in blocks if lang.lower() in ("python", "python3", "py")]
    code = (python or [code for _, code in blocks])[-1]
    return code if code.strip() else None


def same_output(got: str, expected: str) -> bool:
    """Printed output equal up to trailing whitespace, or token by token with numbers within 1e-6."""
    g = [line.rstrip() for line in got.strip().splitlines()]
    e = [line.rstrip() for line in expected.strip().splitlines()]
    if g == e:
        return True
    gt, et = got.split(), expected.split()
    return len(gt) == len(et) and all(a == b or _close(a, b) for a, b in zip(gt, et, strict=True))


def _close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isfinite(x) and math.isfinite(y) and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)


def run_tests(program: str, tests: list[dict], limits: Limits = DEFAULT, fn_name: str | None = None) -> list[dict]:
    """One result per case: {"case", "status", "seconds"}; status is pass, fail, timeout, error, memory,
    blocked, output_limit or skipped."""
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
        source = PRELUDE + program + _DRIVER.format(fn=fn_name) if functional else program
        run = run_python(source, str(case.get("input", "")), limits)
        status = run.status
        if status == "ok":
            expected = str(case.get("output", ""))
            ok = _same_json(run.stdout, expected) if functional else same_output(run.stdout, expected)
            status = "pass" if ok else "fail"
        result = {"case": i, "status": status, "seconds": run.seconds}
        if status not in ("pass", "fail") and run.stderr.strip():
            result["why"] = run.stderr.strip().splitlines()[-1][:200]
        results.append(result)
        if status in STOPS:
            stopped = status
    return results


def _same_json(got: str, expected: str) -> bool:
    try:
        return json.loads(got.strip().splitlines()[-1]) == json.loads(expected)
    except (json.JSONDecodeError, IndexError):
        return same_output(got, expected)


def check(response: str, tests: list[dict], limits: Limits = DEFAULT, fn_name: str | None = None) -> Verdict:
    program = extract_program(response)
    if program is None:
        return Verdict(False, None, {"cases": [], "why": "no code block in the final answer"})
    cases = run_tests(program, tests, limits, fn_name)
    passed = sum(c["status"] == "pass" for c in cases)
    details = {"cases": cases, "passed": passed, "total": len(cases)}
    return Verdict(bool(cases) and passed == len(cases), program, details)
