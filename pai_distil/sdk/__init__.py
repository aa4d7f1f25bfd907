"""The Python SDK: `submit` a stage, `Stage` to check one first, `Pipeline` for a pipeline file, `runs`
for the registry, `Run` for one run. `pai_distil` re-exports them; see its docstring."""

from pai_distil.sdk import runs  # noqa: F401
from pai_distil.sdk.pipeline import Pipeline  # noqa: F401
from pai_distil.sdk.run import Run  # noqa: F401
from pai_distil.sdk.stage import Stage, submit  # noqa: F401
