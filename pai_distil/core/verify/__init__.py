"""Answer verifiers for real reasoning data: math, multiple choice, code (sandboxed), exact match.

`pai_distil.core.verifiers` picks one per row; the modules here hold the checks themselves. Nothing
here imports torch; math-verify (and sympy through it) is imported on first use only.
"""

from pai_distil.core.verify.verdict import Verdict

__all__ = ["Verdict"]
