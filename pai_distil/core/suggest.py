"""Did-you-mean for names a user types: stages, config keys, inputs, pipeline stage ids.

One helper, so every error that names an unknown word offers the nearest known one the same way
(difflib's ratio, as Python's own "did you mean" and git's do).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to `name`, if one is close enough to be a typo of it."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str], fmt: str = "; did you mean '{}'?") -> str:
    """`fmt` filled with the nearest known name, or "" when none is close."""
    close = nearest(name, known)
    return fmt.format(close) if close else ""
