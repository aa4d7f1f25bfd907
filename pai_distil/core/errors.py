"""User-facing errors: one line that names the problem and the fix, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unreachable service).

    The CLI prints `error: <message>` and exits with `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RunFailed(UserError):
    """A job ran and failed; the message carries the job's own last error line."""

    exit_code = 1
