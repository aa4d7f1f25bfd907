"""Agreement of the verifiers with hand-labelled answers: `python -m pai_distil.core.verify.agreement FILE…`.

Each JSONL row is {"gold", "response", "equivalent"} (math) or {"response", "letter", "choices"?}
(multiple choice). Prints the agreement per file and every disagreement; exits 1 below --min.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pai_distil.core.verify import choice, math_answer


def judge(row: dict) -> tuple[bool, bool, str]:
    """(verdict agrees with the label, verdict, what was extracted)."""
    if "letter" in row:
        got = choice.extract_letter(row["response"], row.get("choices") or 4)
        return got == row["letter"], got == row["letter"], str(got)
    v = math_answer.check(row["gold"], row["response"])
    return v.correct == bool(row["equivalent"]), v.correct, str(v.extracted)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--min", type=float, default=0.0, help="fail (exit 1) when any file agrees less than this")
    args = ap.parse_args(argv)
    worst = 1.0
    for path in args.files:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        agree = 0
        for n, row in enumerate(rows, 1):
            ok, verdict, extracted = judge(row)
            agree += ok
            if not ok:
                print(f"  disagrees: {path.name} row {n}: verdict {verdict}, extracted {extracted!r}: {row}")
        rate = agree / len(rows) if rows else 0.0
        worst = min(worst, rate)
        print(f"{path}: {agree}/{len(rows)} agree ({rate:.1%})")
    return 0 if worst >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
