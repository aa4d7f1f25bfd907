"""`pai-distil runs tensorboard RUN`: TensorBoard started on a local run's event files (a real server on
loopback), the command and URL printed; for a run on PAI, the DLC job's page and the event files in OSS."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
from conftest import free_socket, stop_process
from test_cli import CLI, assert_one_line_error, cli

from pai_distil.backends.pai import write_job_info
from pai_distil.paths import run_dir
from pai_distil.run.registry import Registry

RUN = "slow-thinking-20261207-120000-abcd"


def record(home, monkeypatch, output, backend="process"):
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    Registry().create(RUN, "slow-thinking", backend, "key", str(home / "work"), str(output), str(home / "log"),
                      state="succeeded")


def events(output):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(output / "tensorboard")) as w:
        w.add_scalar("train/loss", 1.0, 1)


def test_a_local_run_opens_tensorboard_on_its_event_files(tmp_path, monkeypatch):
    output = tmp_path / "out"
    events(output)
    record(tmp_path / "home", monkeypatch, output)
    with free_socket() as sock:
        port = sock.getsockname()[1]
    shown = cli("runs", "tensorboard", RUN, "--port", port, "--print-only", home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"tensorboard --logdir {output / 'tensorboard'} --port {port}",
                                         f"http://127.0.0.1:{port}/"]
    proc = subprocess.Popen([*CLI, "runs", "tensorboard", RUN, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PAI_DISTIL_HOME": str(tmp_path / "home")})
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/data/runs", timeout=2)
            except httpx.TransportError:
                time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, proc.stderr.read1() if proc.poll() else "no answer"
    finally:
        stop_process(proc)


def test_a_run_without_event_files_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    record(tmp_path / "home", monkeypatch, tmp_path / "out")
    assert_one_line_error(cli("runs", "tensorboard", RUN, home=tmp_path / "home"), "has no TensorBoard event files",
                          "train.report_to")


def test_a_pai_run_names_its_dlc_jobs_tensorboard(tmp_path, monkeypatch):
    record(tmp_path / "home", monkeypatch, "oss://bucket/distil/work/slow-thinking-1/output/", backend="pai")
    run_dir(RUN).mkdir(parents=True, exist_ok=True)
    write_job_info(run_dir(RUN), {"job_id": "dlc1a2b3c4d", "output_prefix": "distil/work/slow-thinking-1/output",
                                  "config": {"region": "cn-shanghai", "workspace_id": "42", "oss_bucket": "bucket"}})
    shown = cli("runs", "tensorboard", RUN, home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    assert "?regionId=cn-shanghai&workspaceId=42#/dlc/jobs/dlc1a2b3c4d" in shown.stdout
    assert "oss://bucket/distil/work/slow-thinking-1/output/tensorboard/" in shown.stdout
