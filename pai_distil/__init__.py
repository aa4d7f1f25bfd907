"""pai-distil: distil small reasoning models from large teachers, as container jobs.

The Python SDK, quiet unless asked (`run.wait(show=True)`), so it suits notebooks::

    from pai_distil import submit
    run = submit("slow-thinking", config={"train": {"max_steps": 200}}, inputs={"cots": "cots.jsonl"})
    run.wait()
    print(run.output)

`Stage`, `Pipeline`, `runs` and `Run` are the rest of it. Names are imported when first used, so
`import pai_distil` (and every `pai-distil` command) stays fast and never imports torch.
"""

__version__ = "0.1.0"

_API = {"submit": "pai_distil.sdk.stage", "Stage": "pai_distil.sdk.stage", "Pipeline": "pai_distil.sdk.pipeline",
        "Run": "pai_distil.sdk.run", "runs": "pai_distil.sdk", "UserError": "pai_distil.core.errors",
        "RunFailed": "pai_distil.core.errors"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'pai_distil' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(n for n in set(globals()) | set(__all__) if n.startswith("__") or not n.startswith("_"))
