"""`--force` on finished work when the new run cannot start: no Docker engine for `-b local`, no
`oss_bucket` for `-b pai`. The earlier output must still be there, whole, and still a cache hit;
the old output goes only once the new run has started."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rich.console import Console
from conftest import wait_until

from pai_distil import paths
from pai_distil.core import artifacts
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry
from pai_distil.run.submission import execute, prepare

FINISHING_JOB = """
import os, pathlib
from pai_distil.core.artifacts import write_manifest
out = pathlib.Path(os.environ["PAI_DISTIL_OUTPUT"])
(out / "cots.jsonl").write_text(os.environ["PAI_DISTIL_RUN_ID"] + "\\n")
write_manifest(out)
"""
QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # no engine, whatever runs here
    for name in [k for k in os.environ if k.startswith("ALIBABA_CLOUD_")]:
        monkeypatch.delenv(name)
    return tmp_path / "home"


def finished(registry: Registry, run_id: str) -> str:
    return wait_until(lambda: (r := registry.get(run_id)).terminal and r, timeout=60).state


def prepared():
    """The same work each time, under a new run id."""
    prep = prepare("generate", {"problems": {"n": 3, "seed": 11}}, {}, where="test")
    prep.spec = prep.spec.model_copy(update={"command": [sys.executable, "-c", FINISHING_JOB]})
    return prep


@pytest.mark.parametrize("backend, why", [("local", "Docker engine is not reachable"), ("pai", "oss_bucket")])
def test_force_keeps_the_finished_output_when_the_new_run_cannot_start(home, backend, why):
    registry = Registry()
    first = execute(prepared(), "process", detach=True, console=QUIET)
    assert finished(registry, first.id) == "succeeded"
    output = Path(first.output)
    before = (output / "cots.jsonl").read_text()

    with pytest.raises(UserError, match=why):
        execute(prepared(), backend, force=True, detach=True, console=QUIET)
    assert (output / "cots.jsonl").read_text() == before == f"{first.id}\n"
    artifacts.verify(output, artifacts.Checked(paths.checked_files()))
    assert registry.get(first.id).state == "succeeded"
    assert execute(prepared(), "process", detach=True, console=QUIET).state == "cached"
    assert not list(output.parent.parent.glob(".*.replaced"))

    second = execute(prepared(), "process", force=True, detach=True, console=QUIET)  # started: the old one goes
    assert finished(registry, second.id) == "succeeded"
    assert (output / "cots.jsonl").read_text() == f"{second.id}\n"
    assert not list(output.parent.parent.glob(".*.replaced"))
