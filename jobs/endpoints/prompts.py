"""Prompts for real teachers and students: the answer format each verifier can read, the
verbosity instruction, and the CoT rewrite (long-to-short / short-to-long) instruction.

The answer-format instruction goes into the user message, not the system prompt: reasoning
models (DeepSeek-R1, QwQ) are served without a system prompt, or ignore it. Synthetic problems
are sent as they are, so the synthetic world keeps its own prompt.
"""

from __future__ import annotations

from pai_distil.core.verifiers import verifier_for

ANSWER_FORMAT: dict[str, str | None] = {
    "synthetic": None,
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "exact": "Please reason step by step, and put your final answer within \\boxed{}.",
    "multiple_choice": "Think it through, then give the letter of the correct choice within \\boxed{}, "
                       "for example \\boxed{C}.",
    "code": "Write a complete Python 3 program that reads the input from standard input and prints the "
            "answer to standard output. Put the whole program in one ```python code block at the end.",
}
FUNCTIONAL = ("Complete the starter code: write the class Solution with the requested method, which "
              "returns its result (do not read input or print). Put the whole code in one ```python code "
              "block at the end.")

REASONING_SYSTEM = (
    "You are a careful reasoner. Think step by step inside <think>...</think>, then give the final answer. "
    "Reasoning verbosity level {verbosity} on a 0-9 scale (0: answer directly, 9: reason at great length, "
    "checking every step)."
)

REFINE = {
    "shorter": "Rewrite the chain of thought below to be more concise: keep only the steps needed to reach "
               "the answer and drop repetitions, detours and needless checks.",
    "longer": "Rewrite the chain of thought below to be more detailed: explain every step, state why it "
              "holds, and check intermediate results.",
}
REFINE_TEMPLATE = (
    "{instruction} Aim for reasoning verbosity level {verbosity} on a 0-9 scale. Keep the same final "
    "answer. Put the rewritten chain inside <think>...</think>, then give the final answer as before.\n\n"
    "Problem:\n{problem}\n\nChain of thought:\n{thought}\n\nFinal answer:\n{solution}"
)


def answer_format(row: dict) -> str | None:
    kind = verifier_for(row)
    if kind == "code" and (row.get("fn_name") or (row.get("meta") or {}).get("fn_name")):
        return FUNCTIONAL
    return ANSWER_FORMAT[kind]


def user_message(row: dict, template: str | None = None) -> str:
    """The user turn for a problem row: the template (`{problem}` replaced), or the problem followed
    by the answer format its verifier reads."""
    if template is not None:
        return template.replace("{problem}", row["problem"])
    fmt = answer_format(row)
    return row["problem"] if fmt is None else f"{row['problem']}\n\n{fmt}"


def refine_message(cot: dict, direction: str, verbosity: int, instruction: str | None = None) -> str:
    """The user turn asking the teacher to rewrite `cot` (a CoT sample) shorter or longer."""
    text = (instruction or REFINE[direction]).replace("{direction}", direction).replace("{verbosity}", str(verbosity))
    return REFINE_TEMPLATE.format(instruction=text, verbosity=verbosity, problem=cot["problem"],
                                  thought=cot.get("thought") or "(none)", solution=cot.get("solution") or "")
