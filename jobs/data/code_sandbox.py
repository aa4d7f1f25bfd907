"""The sandbox of a stage's code answers: chosen once, before any work, and named in the log.

Why before any work: a machine without bubblewrap or Docker (or `isolation: none` without
`allow_unsandboxed`) should fail the job in one line at its start, not after an hour of decoding.
"""

from __future__ import annotations

from pai_distil.core.config import CodeSandbox
from pai_distil.core.verifiers import verifier_for
from pai_distil.core.verify import sandbox
from pai_distil.core.verify.sandbox import Limits, SandboxUnavailable

from pai_distil.core.contract import JobError, log


def open_sandbox(config: CodeSandbox, rows: list[dict], stage: str) -> tuple[Limits, str | None]:
    """The limits of `config` and, when some row is a code problem, the sandbox in force (logged);
    JobError when no sandbox runs here."""
    limits = Limits.of(config)
    if not any(verifier_for(r) == "code" for r in rows):
        return limits, None
    try:
        described = sandbox.describe(limits)
    except SandboxUnavailable as e:
        raise JobError(e.message) from None
    log(f"{stage}: code answers run in a sandbox: {described}")
    return limits, described
