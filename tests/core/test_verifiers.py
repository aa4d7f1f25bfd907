"""Verifiers: agreement with hand-labelled answers, adversarial answers, and the code sandbox."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from pai_distil.core import verifiers
from pai_distil.core.verify import agreement, choice, code, math_answer
from pai_distil.core.verify.sandbox import Limits, describe, run_python
from pai_distil.core.verify.text import last_boxed

PAIRS = Path(__file__).resolve().parents[2] / "examples" / "verifier-pairs"
FAST = Limits(timeout_s=1.5, memory_mb=256)


def labelled(name: str) -> list[dict]:
    return [json.loads(line) for line in (PAIRS / name).read_text().splitlines() if line.strip()]


# -- agreement with hand labels ------------------------------------------------------------------


@pytest.mark.parametrize("name, minimum, size", [("math.jsonl", 0.97, 60), ("math-holdout.jsonl", 0.97, 40),
                                                 ("choice.jsonl", 1.0, 30)])
def test_agreement_with_hand_labels(name, minimum, size):
    rows = labelled(name)
    assert len(rows) >= size
    wrong = [(r, agreement.judge(r)[2]) for r in rows if not agreement.judge(r)[0]]
    assert 1 - len(wrong) / len(rows) >= minimum, wrong


def test_math_sets_hold_both_kinds():
    rows = labelled("math.jsonl")
    assert sum(r["equivalent"] for r in rows) >= 25 and sum(not r["equivalent"] for r in rows) >= 25


def test_agreement_command(capsys):
    assert agreement.main([str(PAIRS / "choice.jsonl"), "--min", "1.0"]) == 0
    assert "36/36 agree" in capsys.readouterr().out


# -- math -----------------------------------------------------------------------------------------


def test_last_boxed_handles_nesting_and_truncation():
    assert last_boxed(r"so \boxed{\frac{1}{\sqrt{2}}} done") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert last_boxed(r"\boxed 7.") == "7"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # cut off mid-answer
    assert last_boxed("no box") is None


@pytest.mark.parametrize("gold, response", [
    ("3", r"\boxed{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}"),  # every candidate at once
    ("3", r"<think>It is \boxed{3}</think> I am not sure."),  # the right answer only in the thought
    ("3", r"<think>It is \boxed{3}"),  # cut off inside the thought
    ("3", r"\boxed{3 or 4}"),
    ("3", r"\boxed{x}"),
    ("3", "3" * 3000),
    ("3", r"\boxed{3} at first, but finally \boxed{4}"),
    ("4", r"\boxed{3}, so the answer is 4"),  # the box, not the prose
    ("4", r"\boxed{\frac{4}{0}}"),
])
def test_math_adversarial_answers_are_rejected(gold, response):
    assert not math_answer.check(gold, response).correct


def test_pathological_answer_that_times_out_is_a_wrong_verdict_not_an_error(monkeypatch):
    # Without a timeout this nesting takes math-verify ~10 s; with one, the parse is abandoned and
    # the verdict is "wrong" rather than an exception (speed is not asserted here: CI is loaded).
    monkeypatch.setattr(math_answer, "TIMEOUT_S", 1)
    verdict = math_answer.check("4", r"\boxed{" + "(" * 60 + "3" + ")" * 60 + "}")
    assert verdict.correct is False


def test_math_verdict_reports_what_it_read():
    v = math_answer.check(r"\frac{1}{2}", r"<think>half</think>The answer is \boxed{0.5}.")
    assert v.correct and v.extracted == "0.5"
    assert math_answer.check("2", "no answer here at all").extracted is None


# -- multiple choice ------------------------------------------------------------------------------


def test_choice_letters_out_of_range_and_missing():
    assert choice.extract_letter("The answer is E.", 4) is None
    assert choice.extract_letter("The answer is E.", 5) == "E"
    assert choice.extract_letter("I cannot decide.", 4) is None
    assert choice.extract_letter("A reaction happens when heated.", 4) is None
    assert choice.extract_letter("My answer is a guess.", 4) is None  # the article, not a choice
    assert choice.extract_letter("The answer is a fraction, namely (C)", 4) == "C"


def test_choice_by_text_when_no_letter():
    choices = ["1.24 eV", "2.48 eV", "4.96 eV", "0.62 eV"]
    assert choice.check("B", r"The energy is \boxed{2.48 eV}", choices).correct
    assert not choice.check("B", r"The energy is \boxed{2.5 eV}", choices).correct


# -- dispatch -------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, expected", [
    ({"answer": "3"}, "synthetic"),
    ({"domain": "synthetic", "answer": "3"}, "synthetic"),
    ({"domain": "math", "answer": "3"}, "math"),
    ({"domain": "science", "answer": "B", "choices": ["x", "y"]}, "multiple_choice"),
    ({"domain": "science", "answer": "3"}, "math"),
    ({"domain": "code", "tests": [{"input": "", "output": ""}]}, "code"),
    ({"domain": "puzzle", "answer": "x", "verifier": "exact"}, "exact"),
    ({"domain": "gpqa", "verifier": "mcq", "answer": "A"}, "multiple_choice"),
])
def test_verifier_for(row, expected):
    assert verifiers.verifier_for(row) == expected


def test_unknown_verifier_names_the_choices():
    with pytest.raises(ValueError, match="choose one of synthetic, exact, math, multiple_choice, code"):
        verifiers.verifier_for({"verifier": "fuzzy"})


def test_exact_and_synthetic_unchanged():
    assert verifiers.verify({"domain": "exact", "answer": "Paris"}, "The capital is\nParis")
    assert not verifiers.verify({"domain": "exact", "answer": "Paris"}, r"\boxed{paris}")
    assert verifiers.verify({"answer": "7"}, "<think>3+4</think>\n\\boxed{7}")
    assert not verifiers.verify({"answer": "7"}, "<think>\\boxed{7}")
    assert verifiers.extract({"domain": "math", "answer": "1"}, r"\boxed{\frac12}") == r"\frac12"


# -- code -----------------------------------------------------------------------------------------

SUM_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"},
             {"input": "-4 1\n", "output": "-3\n"}]


def answer(program: str) -> str:
    return f"<think>easy</think>\nHere is my solution:\n```python\n{program}\n```"


def code_row(tests=SUM_TESTS, **kw) -> dict:
    return {"id": "c", "domain": "code", "tests": tests, **kw}


def test_code_passes_and_reports_each_case():
    v = verifiers.check(code_row(), answer("a, b = map(int, input().split())\nprint(a + b)"), FAST)
    assert v.correct and [c["status"] for c in v.details["cases"]] == ["pass", "pass", "pass"]
    wrong = verifiers.check(code_row(), answer("a, b = map(int, input().split())\nprint(a + b if a > 0 else 0)"), FAST)
    assert not wrong.correct and [c["status"] for c in wrong.details["cases"]] == ["pass", "pass", "fail"]


def test_code_functional_tests_call_the_method():
    tests = [{"input": "[1, 2, 3, 4]", "output": "2", "testtype": "functional"}]
    program = ("class Solution:\n    def countEven(self, nums: List[int]) -> int:\n"
               "        return sum(x % 2 == 0 for x in nums)")
    assert verifiers.check(code_row(tests, fn_name="countEven"), answer(program), FAST).correct


def test_code_without_a_program_fails():
    v = verifiers.check(code_row(), "print(1)  # no code block", FAST)
    assert not v.correct and v.extracted is None


def test_output_comparison():
    assert code.same_output("1 2  \n3\n\n", "1 2\n3")
    assert code.same_output("0.3333333", "0.33333333")
    assert not code.same_output("1 2", "1 3")


def test_integers_and_words_compare_exactly_and_only_expected_decimals_within_tolerance():
    assert not code.same_output("998244350", "998244353")  # within 1e-6 relative, still wrong
    assert not code.same_output("1.0", "1") and code.same_output("1", "1.0000001e0")  # the expected one decides
    assert code.same_output("2 0.50000001", "2 0.5") and not code.same_output("2 0.5001", "2 0.5")
    assert not code.same_output("true", "1") and not code.same_output("nan", "0.5")


def test_function_results_compare_by_type_and_value():
    assert not code.same_value(True, 1) and not code.same_value(1, True) and not code.same_value(0, False)
    assert not code.same_value(998244350, 998244353) and not code.same_value(3.0, 3) and not code.same_value("1", 1)
    assert code.same_value(3, 3.0) and code.same_value(0.1 + 0.2, 0.3) and code.same_value(None, None)
    assert not code.same_value([1, 2], [1, 2, 3]) and code.same_value({"a": [1.0]}, {"a": [1.0000000001]})
    assert not code.same_value({"a": 1}, {"a": 1, "b": 2}) and not code.same_value([True], [1])


HOSTILE = {
    "infinite loop": ("while True:\n    pass", "timeout"),
    "sleep": ("import time\ntime.sleep(60)", "timeout"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", "blocked"),
    "multiprocessing": ("import multiprocessing as mp\nmp.Process(target=print).start()", "fail"),  # inside
    "huge allocation": ("x = bytearray(50 * 1024 ** 3)", "memory"),
    "growing list": ("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", "memory"),
    "network call": ("import urllib.request\nurllib.request.urlopen('http://{host}/', timeout=2)", "blocked"),
    "raw socket": ("import socket\nsocket.create_connection(('{hostname}', {port}), timeout=2)", "blocked"),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", "fail"),  # runs, inside
    "write outside": ("open('/tmp/pai-distil-sandbox-escape', 'w').write('x')", "fail"),  # the sandbox's own /tmp
    "endless output": ("while True:\n    print('x' * 10000)", "output_limit"),
}


class _Counter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    """A loopback HTTP server counting the requests that reach it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    server.hits = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_listener_is_reachable_outside_the_sandbox(listener):
    import urllib.request

    urllib.request.urlopen(f"http://127.0.0.1:{listener.server_address[1]}/", timeout=5)
    assert listener.hits == 1


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_are_stopped_and_marked_failed(name, listener):
    program, status = HOSTILE[name]
    port = listener.server_address[1]
    program = program.format(host=f"127.0.0.1:{port}", hostname="127.0.0.1", port=port)
    start = time.monotonic()
    v = verifiers.check(code_row(), answer(program), Limits(timeout_s=1.5, memory_mb=256, output_mb=1))
    assert time.monotonic() - start < 40  # stopped, not left to run its 60 s
    cases = v.details["cases"]
    assert not v.correct and cases[0]["status"] == status, cases
    if status in code.STOPS:  # one hostile run is enough: later cases are not run again
        assert {c["status"] for c in cases[1:]} == {"skipped"}
    assert not Path("/tmp/pai-distil-sandbox-escape").exists()
    assert listener.hits == 0  # the network call never arrived


def test_evaluation_continues_after_hostile_answers():
    responses = [answer(HOSTILE["infinite loop"][0]), answer(HOSTILE["fork bomb"][0]),
                 answer("a, b = map(int, input().split())\nprint(a + b)")]
    verdicts = [verifiers.check(code_row(), r, Limits(timeout_s=1, memory_mb=256)).correct for r in responses]
    assert verdicts == [False, False, True]


def test_sandbox_runs_in_a_scratch_dir_of_its_own_and_says_which_boundary():
    r = run_python("import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('ok')", limits=FAST)
    assert r.status == "ok" and r.stdout.strip() == "/tmp"
    assert not Path("/tmp/scratch.txt").exists()  # the sandbox's /tmp, not this machine's
    assert describe(FAST).split(":")[0] in ("bwrap", "docker")
