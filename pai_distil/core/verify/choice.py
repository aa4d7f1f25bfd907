"""Multiple choice: the chosen letter read from free-form answers, and the verdict.

Phrasings differ ("The answer is (C)", "**C**", "C) 3.2 eV", "\\boxed{\\text{C}}"), so patterns
are tried from the most explicit (a box) to the least (a lone letter), and the last match of the
first pattern that matches wins: a model that changes its mind is judged by its last word.
"""

from __future__ import annotations

import re

from pai_distil.core.verify.text import final_part, last_boxed
from pai_distil.core.verify.verdict import Verdict

LETTERS = "ABCDEFGHIJ"


def _patterns(letters: str) -> list[re.Pattern]:
    L = f"[{letters}]"
    macro = r"(?:\\(?:text|textbf|mathrm|mathbf)\{)?"
    wrapped = rf"(?:\*\*|__)?\s*[\(\[]?\s*{macro}\s*[\(\[]?({L})[\)\]]?\}}?[\)\]]?(?:\*\*|__)?"
    anchor = (r"(?:final\s+answer|correct\s+answer|best\s+answer|correct\s+(?:option|choice)|answer|option|choice)"
              r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be))?\s*(?:[:：]|is)?\s*(?:\*\*)?\s*(?:option|choice)?\s*")
    return [
        re.compile(anchor + wrapped + r"(?![A-Za-z])", re.IGNORECASE | re.MULTILINE),
        re.compile(rf"(?:choose|chose|pick|select|go\s+with)\s+(?:option\s+|choice\s+)?[\(\[]?({L})[\)\]]?(?![A-Za-z])",
                   re.IGNORECASE),
        re.compile(rf"\*\*\s*[\(\[]?({L})[\)\]\.:]?(?:\s[^*\n]*)?\*\*"),
        re.compile(rf"\\text(?:bf)?\{{\s*\(?({L})\)?\s*\}}"),
        re.compile(rf"(?:^|\n)\s*[\(\[]?({L})[\)\]]?\s+(?:is\s+(?:the\s+)?(?:correct|right|answer))", re.IGNORECASE),
        re.compile(rf"(?:^|\n)\s*[\(\[]({L})[\)\]]"),
        re.compile(rf"(?:^|\n)\s*({L})\s*[\).:](?:\s|$)"),
        re.compile(rf"[\(\[]({L})[\)\]]"),
        re.compile(rf"(?:^|[\s\"'`$])({L})(?=[\s.!,;:\"'`$]*$)"),
        re.compile(rf"(?:^|\s)({L})[\.\)]?(?=\s|$)(?!\s+[a-z])"),  # not the article in "A reaction"
    ]


_CACHE: dict[str, list[re.Pattern]] = {}


def extract_letter(response: str, choices: int | list = 4) -> str | None:
    """The chosen letter (upper case) among the first `choices` letters, or None."""
    n = choices if isinstance(choices, int) else len(choices)
    letters = LETTERS[:max(2, min(n, len(LETTERS)))]
    part = final_part(response).strip()
    boxed = last_boxed(part)
    if boxed is not None:
        part = boxed
    part = part.replace("$", " ")
    pats = _CACHE.setdefault(letters, _patterns(letters))
    if boxed is not None or len(part) <= 3:
        m = re.fullmatch(rf"\W*(?:\\\w+\{{)?\W*([{letters}{letters.lower()}])\W*\}}?\W*", part)
        if m:
            return m.group(1).upper()
    for pat in pats:
        found = [m for m in pat.finditer(part) if not _article(m, part)]
        if found:
            return found[-1].group(1).upper()
    return None


def _article(m: re.Match, text: str) -> bool:
    """A lower-case letter followed by a word is a word itself ("the answer is a fraction")."""
    return m.group(1).islower() and re.match(r"\s+[A-Za-z]", text[m.end():]) is not None


def _by_text(response: str, choices: list) -> str | None:
    """The letter of the choice whose text is the final answer (a model that answered "\\boxed{42}")."""
    answer = last_boxed(final_part(response))
    if answer is None:
        return None
    norm = lambda s: re.sub(r"\s+", " ", str(s)).strip().strip(".").lower()  # noqa: E731
    hits = [LETTERS[i] for i, c in enumerate(choices) if norm(c) == norm(answer)]
    return hits[0] if len(hits) == 1 else None


def check(answer: str, response: str, choices: list | None = None) -> Verdict:
    """`answer` is the correct letter; `choices` (texts, in letter order) allow answering with the text."""
    letter = extract_letter(response, choices or 4)
    if letter is None and choices:
        letter = _by_text(response, choices)
    return Verdict(letter is not None and letter == str(answer).strip().upper().strip("()"), letter)
