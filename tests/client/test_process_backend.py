"""The process backend with real subprocesses: job contract, outcomes, cancel, multi-node, CLI.

Jobs here are small Python programs that follow the job contract, so the backend is tested
independently of the stages.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from pai_distil import paths
from pai_distil.core.artifacts import is_complete
from pai_distil.backends import get_backend
from pai_distil.backends.process import ProcessBackend
from pai_distil.cli import cli
from pai_distil.core.errors import UserError
from pai_distil.run.follow import follow, tail_log
from pai_distil.run.registry import SUPERVISOR_GONE, Registry, RunRecord, new_run_id
from pai_distil.core.config import JobSpec

PRELUDE = """
import json, os, pathlib, signal, sys, time
from pai_distil.core.artifacts import write_manifest
out = pathlib.Path(os.environ["PAI_DISTIL_OUTPUT"])
"""

CONTRACT_JOB = """
names = [k for k in os.environ if k.startswith(("PAI_DISTIL_", "MASTER_", "EXTRA_")) or k in
         ("WORLD_SIZE", "RANK", "NPROC_PER_NODE", "PYTHONUNBUFFERED")]
(out / f"env-{os.environ['RANK']}.json").write_text(json.dumps({k: os.environ[k] for k in names}))
print("hello from rank", os.environ["RANK"])
if os.environ["RANK"] == "0":
    deadline = time.time() + 20
    while len(list(out.glob("env-*.json"))) < int(os.environ["WORLD_SIZE"]) and time.time() < deadline:
        time.sleep(0.05)
    write_manifest(out)
"""

FAILING_JOB = """
print("loading data")
print("pai-distil job error: input 'cots' holds no rows; run generate first", file=sys.stderr, flush=True)
print("Traceback noise after the error line")
sys.exit(3)
"""

SLEEPING_JOB = """
def on_term(*_):
    (out / "got-sigterm").write_text("checkpoint saved")
    print("got SIGTERM; checkpoint saved", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def registry(home) -> Registry:
    return Registry()


def start(registry: Registry, code: str, *, nodes: int = 1, inputs: dict | None = None, env: dict | None = None,
          stage: str = "generate", config: dict | None = None) -> RunRecord:
    run_id = new_run_id(stage)
    work = paths.work_dir(stage, run_id)
    record = registry.create(run_id, stage, "process", cache_key=run_id, work_dir=work, output=work / "output",
                             log_path=paths.run_dir(run_id) / "job.log")
    spec = JobSpec(run_id=run_id, stage=stage, command=[sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                   config=config or {"answer": 42}, inputs=inputs or {}, output=str(work / "output"),
                   checkpoint_dir=str(work / "checkpoints"), nodes=nodes, procs_per_node=2, env=env or {})
    return get_backend("process", registry).start(spec, record)


def wait_state(registry: Registry, run_id: str, timeout: float = 30) -> RunRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.get(run_id)
        if record.terminal:
            return record
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {record.state} after {timeout} s")


def wait_log(record: RunRecord, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in Path(record.log_path).read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log: {Path(record.log_path).read_text()}")


def kill_group(pid: int | None) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass


def test_success_sets_the_job_contract(registry, tmp_path):
    data = tmp_path / "cots"
    data.mkdir()
    record = start(registry, CONTRACT_JOB, inputs={"cots": str(data), "my-model": "/models/m"},
                   env={"EXTRA_FLAG": "on"})
    assert record.supervisor_pid and record.state in ("queued", "running")
    done = wait_state(registry, record.id)
    assert (done.state, done.exit_code, done.error) == ("succeeded", 0, None), Path(done.log_path).read_text()
    assert done.started_at and done.finished_at >= done.started_at and done.job_pid
    assert is_complete(done.output)
    env = json.loads((Path(done.output) / "env-0.json").read_text())
    run_dir = paths.run_dir(record.id)
    assert env["PAI_DISTIL_STAGE"] == "generate" and env["PAI_DISTIL_RUN_ID"] == record.id
    assert env["PAI_DISTIL_CONFIG"] == str(run_dir / "config.json")
    assert json.loads(Path(env["PAI_DISTIL_CONFIG"]).read_text()) == {"answer": 42}
    assert JobSpec.model_validate_json((run_dir / "spec.json").read_text()).run_id == record.id
    assert env["PAI_DISTIL_INPUT_COTS"] == str(data) and env["PAI_DISTIL_INPUT_MY_MODEL"] == "/models/m"
    assert env["PAI_DISTIL_OUTPUT"] == done.output
    assert Path(env["PAI_DISTIL_CHECKPOINT_DIR"]).is_dir()
    assert env["MASTER_ADDR"] == "127.0.0.1" and 0 < int(env["MASTER_PORT"]) < 65536
    assert (env["WORLD_SIZE"], env["RANK"], env["NPROC_PER_NODE"]) == ("1", "0", "2")
    assert env["PYTHONUNBUFFERED"] == "1" and env["EXTRA_FLAG"] == "on"
    assert "hello from rank 0" in Path(done.log_path).read_text()


def test_two_nodes_run_two_launchers(registry):
    done = wait_state(registry, start(registry, CONTRACT_JOB, nodes=2).id)
    assert done.state == "succeeded", Path(done.log_path).read_text()
    envs = [json.loads((Path(done.output) / f"env-{r}.json").read_text()) for r in (0, 1)]
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]


def test_failure_reports_the_job_error_line(registry):
    done = wait_state(registry, start(registry, FAILING_JOB).id)
    assert done.state == "failed" and done.exit_code == 3
    assert done.error == "input 'cots' holds no rows; run generate first"
    assert not is_complete(done.output)


def test_failure_without_error_line_reports_the_last_line(registry):
    done = wait_state(registry, start(registry, "print('step 1')\nprint('out of memory')\nprint()\nsys.exit(1)").id)
    assert (done.state, done.error, done.exit_code) == ("failed", "out of memory", 1)


def test_exit_zero_without_manifest_fails(registry):
    done = wait_state(registry, start(registry, "(out / 'half.jsonl').write_text('{}')").id)
    assert (done.state, done.error) == ("failed", "job exited 0 but wrote no complete artifact")


def test_bad_command_fails_with_one_line(registry, home):
    run_id = new_run_id("generate")
    record = registry.create(run_id, "generate", "process", None, None, str(home / "o"), str(home / "log"))
    spec = JobSpec(run_id=run_id, stage="generate", command=["/no/such/program"], config={},
                   output=str(home / "o"), checkpoint_dir=str(home / "c"))
    done = wait_state(registry, ProcessBackend(registry).start(spec, record).id)
    assert done.state == "failed" and "cannot start job command '/no/such/program'" in done.error


def test_one_failed_node_stops_the_others(registry):
    code = SLEEPING_JOB.replace('print("ready"', 'os.environ["RANK"] == "1" and sys.exit(5)\nprint("ready"')
    t0 = time.monotonic()
    done = wait_state(registry, start(registry, code, nodes=2).id)
    assert (done.state, done.exit_code) == ("failed", 5)
    assert time.monotonic() - t0 < 45  # the other node was stopped, not left to sleep 60 s


def test_cancel_sends_sigterm_and_records_cancelled(registry):
    record = start(registry, SLEEPING_JOB)
    wait_log(record, "ready")
    done = get_backend("process", registry).cancel(record)
    assert done.state == "cancelled" and done.finished_at
    assert (Path(done.output) / "got-sigterm").read_text() == "checkpoint saved"
    log = Path(done.log_path).read_text()
    assert "cancel requested" in log and "got SIGTERM; checkpoint saved" in log


def test_cancel_right_after_start_is_not_lost(registry):
    record = start(registry, SLEEPING_JOB)
    done = ProcessBackend(registry).cancel(record, wait_s=20)
    assert done.state == "cancelled" and done.error is None


def test_job_ignoring_sigterm_is_killed_after_the_grace(registry, monkeypatch):
    monkeypatch.setenv("PAI_DISTIL_STOP_GRACE_S", "0.5")
    record = start(registry, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)")
    wait_log(record, "ready")
    t0 = time.monotonic()
    done = ProcessBackend(registry).cancel(record)
    assert (done.state, done.exit_code) == ("cancelled", 137) and time.monotonic() - t0 < 45


def test_job_killed_from_outside_fails(registry):
    record = start(registry, SLEEPING_JOB)
    wait_log(record, "ready")
    os.kill(registry.get(record.id).job_pid, signal.SIGKILL)
    done = wait_state(registry, record.id)
    assert (done.state, done.error, done.exit_code) == ("failed", "killed by signal 9", 137)


def test_dead_supervisor_is_reconciled_as_failed(registry):
    record = start(registry, SLEEPING_JOB)
    wait_log(record, "ready")
    running = registry.get(record.id)
    assert running.state == "running"
    try:
        os.kill(running.supervisor_pid, signal.SIGKILL)
        done = wait_state(registry, record.id)
        assert (done.state, done.error) == ("failed", SUPERVISOR_GONE)
    finally:
        kill_group(running.job_pid)


def test_follow_prints_lines_and_draws_progress(registry):
    code = """
    print("loading")
    for i in range(1, 4):
        print(f"[progress] train {i}/3", flush=True)
        time.sleep(0.05)
    print("trained")
    write_manifest(out)
    """
    record = start(registry, code)
    buf = io.StringIO()
    done = follow(record.id, registry, Console(file=buf, width=120))
    assert done.state == "succeeded"
    text = buf.getvalue()
    assert "loading" in text and "trained" in text and "[progress]" not in text
    assert "train" in text and "3/3" in text  # the final bar


def test_follow_ctrl_c_cancels_the_run(registry, home):
    record = start(registry, SLEEPING_JOB)
    # a shell started in the background ignores SIGINT, and children inherit that: restore it, as
    # in a terminal
    watcher = subprocess.Popen([sys.executable, "-c", f"from pai_distil.run.follow import follow; follow({record.id!r})"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in watcher.stdout:  # the watcher is following once it has echoed the job's output
        seen.append(line)
        if "ready" in line:
            break
    watcher.send_signal(signal.SIGINT)
    out, _ = watcher.communicate(timeout=90)
    out = "".join(seen) + out
    assert f"run {record.id} cancelled" in out and "ready" in out
    assert registry.get(record.id).state == "cancelled"


def test_tail_log_and_unknown_backend(registry):
    done = wait_state(registry, start(registry, "print('a')\nprint('[progress] x 1/1')\nwrite_manifest(out)").id)
    buf = io.StringIO()
    tail_log(done, follow=False, registry=registry, out=buf)
    assert buf.getvalue() == "a\n[progress] x 1/1\n"
    assert get_backend("local").name == "local"  # Docker: tests/e2e/test_docker_local.py
    assert get_backend("pai").name == "pai"  # PAI: tests/emulator/test_pai_backend.py, against the emulator
    with pytest.raises(UserError, match="unknown backend"):
        get_backend("k8s")


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_list_show_logs(registry):
    code = """
    print("epoch done")
    with open(out / "metrics.jsonl", "w") as f:
        for step, loss in ((10, 2.5), (20, 1.25)):
            f.write(json.dumps({"step": step, "loss": loss}) + "\\n")
    write_manifest(out)
    """
    ok = wait_state(registry, start(registry, code).id)
    bad = wait_state(registry, start(registry, FAILING_JOB, stage="evaluate").id)
    runner = CliRunner()

    result = runner.invoke(cli, ["runs", "list"])
    assert result.exit_code == 0, result.output
    assert ok.id in result.output and bad.id in result.output
    assert "succeeded" in result.output and "failed" in result.output
    result = runner.invoke(cli, ["runs", "list", "--stage", "evaluate"])
    assert bad.id in result.output and ok.id not in result.output
    result = runner.invoke(cli, ["runs", "list", "--state", "succeeded", "--limit", "1"])
    assert ok.id in result.output and bad.id not in result.output

    result = runner.invoke(cli, ["runs", "show", ok.id[:-2]])
    assert result.exit_code == 0 and ok.id in result.output
    assert "step 20, loss 1.25 (2 records)" in result.output
    result = runner.invoke(cli, ["runs", "show", bad.id])
    assert "holds no rows" in result.output and "3" in result.output

    result = runner.invoke(cli, ["runs", "logs", ok.id])
    assert result.exit_code == 0 and result.output == "epoch done\n"
    result = runner.invoke(cli, ["runs", "logs", "-f", bad.id])
    assert result.exit_code == 0 and "loading data" in result.output


def test_cli_cancel(registry):
    record = start(registry, SLEEPING_JOB)
    wait_log(record, "ready")
    result = CliRunner().invoke(cli, ["runs", "cancel", record.id])
    assert result.exit_code == 0, result.output
    assert f"run {record.id} cancelled" in result.output
    assert registry.get(record.id).state == "cancelled"
    result = CliRunner().invoke(cli, ["runs", "cancel", record.id])
    assert result.exit_code == 0 and "already cancelled" in result.output


@pytest.mark.parametrize("command", [["show", "nope"], ["logs", "nope"], ["cancel", "nope"]])
def test_cli_unknown_run_is_one_line_exit_2(registry, command):
    result = CliRunner().invoke(cli, ["runs", *command])
    assert result.exit_code == 2
    assert result.stderr == "error: no run 'nope'; `pai-distil runs list` shows run ids\n"


def test_cli_unknown_run_in_a_real_process(home):
    exe = Path(sys.executable).parent / "pai-distil"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-c", "from pai_distil.cli import main; main()"]
    proc = subprocess.run([*argv, "runs", "show", "nope"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: no run 'nope'; `pai-distil runs list` shows run ids"]
