"""Numeric settings read from the environment (`PAI_DISTIL_*_S`, `PAI_DISTIL_*_MB`).

Why one reader, checked as a command starts: `float(os.environ.get(...))` at the point of use
turned `PAI_DISTIL_MAX_BODY_MB=abc` into a 500 with a traceback on every request, and
`PAI_DISTIL_STOP_GRACE_S=abc` into a supervisor that died mid-run. Every command line checks
them all first (`check_all`), so a bad value stops it in one line naming the variable and the fix.

Example: `grace_s = env_number(STOP_GRACE_S, 30.0)`.
"""

from __future__ import annotations

import os

from pai_distil.core.errors import UserError

STOP_GRACE_S = "PAI_DISTIL_STOP_GRACE_S"  # seconds a cancelled job has to save a checkpoint before SIGKILL
MAX_BODY_MB = "PAI_DISTIL_MAX_BODY_MB"  # the largest request body a server accepts
EMULATOR_GRACE_S = "PAI_DISTIL_EMULATOR_GRACE_S"  # the emulator's grace between SIGTERM and SIGKILL of a job
UNITS = {STOP_GRACE_S: "seconds", MAX_BODY_MB: "MiB", EMULATOR_GRACE_S: "seconds"}
MAXIMUM = 1e6  # a million seconds (11 days) or MiB (1 TiB): more is a typo, and overflows what reads it


def env_number(name: str, default: float) -> float:
    """The value of environment variable `name` as a number from 0 to MAXIMUM, or `default` when unset or empty.

    Raises:
        UserError: the value is not such a number.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= MAXIMUM:  # NaN fails this too
        raise UserError(f"environment variable {name}={raw!r} is not a number of {UNITS.get(name, 'units')} "
                        f"from 0 to {MAXIMUM:.0f}; set it to one, or unset it for the default")
    return value


def check_all() -> None:
    """Every numeric setting, checked once (a UserError on the first bad one)."""
    for name in UNITS:
        env_number(name, 0.0)
