"""One job per work directory: a second submit of the same work is refused with one line naming
the running run; a job whose supervisor died is found and stopped, and the work goes on in a new
run; a run that nothing holds the work dir of is not left `running`."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from test_cli import assert_one_line_error, cli
from test_process_backend import PRELUDE, wait_state

from pai_distil import paths
from pai_distil.run import work_lock
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry, pid_alive
from pai_distil.run.submission import execute, prepare

# Writes its artifact once `go` exists; SIGTERM (a stop) leaves a mark and no artifact.
WAITING_JOB = PRELUDE + textwrap.dedent("""
    def on_term(*_):
        (out / "got-sigterm").write_text("checkpoint saved")
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    (out / "steps.log").open("a").write(os.environ["PAI_DISTIL_RUN_ID"] + "\\n")
    while not (out.parent / "go").exists():
        time.sleep(0.05)
    write_manifest(out)
""")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv("PAI_DISTIL_STOP_GRACE_S", "5")
    return tmp_path / "home"


def prepared():
    """The same work each time (same stage, config and inputs), under a new run id."""
    prep = prepare("generate", {"problems": {"n": 3, "seed": 11}}, {}, where="test")
    prep.spec = prep.spec.model_copy(update={"command": [sys.executable, "-c", WAITING_JOB]})
    return prep


def submit(prep):
    return execute(prep, "process", detach=True, console=Console(file=open(os.devnull, "w")))


def wait_running(registry: Registry, run_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.get(run_id)
        if record.state == "running" and (Path(record.output) / "steps.log").exists():
            return record
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not start: {registry.get(run_id)}")


def test_a_second_submit_of_running_work_is_refused_naming_the_run(home):
    registry = Registry()
    first = submit(prepared())
    wait_running(registry, first.id)
    with pytest.raises(UserError, match=f"run {first.id} is already working in"):
        submit(prepared())
    with pytest.raises(UserError, match=f"run {first.id}"):
        execute(prepared(), "process", force=True, detach=True)  # --force must not empty its folder either
    (Path(first.work_dir) / "go").touch()
    assert wait_state(registry, first.id).state == "succeeded"
    assert (Path(first.output) / "steps.log").read_text().splitlines() == [first.id]  # trained once
    assert submit(prepared()).state == "cached"
    deadline = time.monotonic() + 10
    while work_lock.holder(first.work_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the supervisor exits just after recording the outcome
    assert work_lock.holder(first.work_dir) is None


def test_a_job_whose_supervisor_died_is_stopped_and_the_work_goes_on(home):
    registry = Registry()
    first = wait_running(registry, submit(prepared()).id)
    job_pid = first.job_pid
    os.kill(first.supervisor_pid, signal.SIGKILL)
    while pid_alive(first.supervisor_pid):
        time.sleep(0.05)
    assert pid_alive(job_pid) and work_lock.holder(first.work_dir)["run_id"] == first.id  # orphaned, still working
    second = submit(prepared())  # finds the orphan, stops it, then starts
    record = registry.get(first.id)
    assert record.state == "failed" and "its job was stopped" in record.error
    assert not pid_alive(job_pid) and (Path(first.output) / "got-sigterm").exists()
    wait_running(registry, second.id)
    (Path(second.work_dir) / "go").touch()
    assert wait_state(registry, second.id).state == "succeeded"
    assert registry.get(first.id).state == "failed"


def test_a_running_record_whose_work_dir_nothing_holds_is_failed(home):
    registry = Registry()
    prep = prepared()
    work_lock.hold(prep.work_dir, prep.spec.run_id)
    work_lock.release(prep.work_dir)  # the lock file exists; nothing holds it
    registry.create(prep.spec.run_id, "generate", "process", prep.cache_key, prep.work_dir, prep.spec.output, None,
                    state="running")
    registry.update(prep.spec.run_id, supervisor_pid=os.getpid())  # a live pid, not the run's supervisor
    record = registry.get(prep.spec.run_id)
    assert record.state == "failed" and "nothing of the run holds its work dir" in record.error


def test_cli_second_detached_submit_is_one_line(tmp_path):
    silent = socket.socket()  # a teacher that accepts and never answers: the first job waits on it
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
                                               "timeout_s": 120, "max_retries": 0}, "problems": {"n": 2}}))
    home = tmp_path / "h"
    first = cli("submit", "generate", "-c", cfg, "--detach", home=home)
    assert first.returncode == 0, first.stderr
    run_id = first.stderr.split("submitted run ")[1].split(";")[0].strip()
    try:
        second = cli("submit", "generate", "-c", cfg, "--detach", home=home)
        assert_one_line_error(second, f"run {run_id} is already working in", "runs cancel")
    finally:
        assert cli("runs", "cancel", run_id, home=home).returncode == 0
        silent.close()
