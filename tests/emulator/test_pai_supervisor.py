"""The pai supervisor never kills or orphans a paid job: it rides out ten minutes of GetJob failures and
refused (expired) credentials without StopJob; `runs cancel` stops the DLC job when the supervisor was
killed; `runs attach` reattaches; Ctrl-C on an attached run detaches and says how to come back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from alibabacloud_pai_dlc20201203 import models as m
from conftest import wait_until
from emulator_support import (ACCESS_KEY_ID, ACCESS_KEY_SECRET, CLI, WRITE_MANIFEST, cli, client_env, configure,
                              dlc_client, dlc_run, start_emulator)

from pai_distil.cloud.pai import dlc


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


def status(emu, job_id: str) -> str:
    return dlc_client(emu).get_job(job_id, m.GetJobRequest()).body.status


def spawn_supervisor(home, run_id: str, registry_path, directory) -> subprocess.Popen:
    with open(directory / "job.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pai_distil.backends.pai_supervisor", run_id, str(registry_path)],
                                env=client_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: ": Running" in (directory / "job.log").read_text(), timeout=120)
    return proc


class Expired(Exception):
    """What the Tea client raises for an expired STS token."""

    code = "InvalidSecurityToken.Expired"
    message = "Specified SecurityToken is expired."


def test_ten_minutes_of_getjob_failures_and_an_expired_token_never_stop_the_job(emu, tmp_path, monkeypatch, capsys):
    from pai_distil.backends.pai_supervisor import PaiSupervisor
    from pai_distil.cloud.pai.credentials import chain
    from pai_distil.run.registry import Registry

    home = tmp_path / "home"
    configure(home, emu)
    job_id, directory, registry_path = dlc_run(emu, home, "sleep 2; echo trained; " + WRITE_MANIFEST, "ride-out-1")
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    chain.cache_clear()

    real_get_job, stops, waited = dlc.get_job, [], []
    failing = {"on": True}

    def get_job(client, job):  # the network goes, then the token expires, for ten (simulated) minutes
        if failing["on"] and sum(waited) < 600:
            error = Expired() if len(waited) % 2 else ConnectionError("Connection reset by peer")
            raise dlc.explain(error, f"reading job {job}")
        failing["on"] = False
        return real_get_job(client, job)

    def wait(self, seconds):
        if failing["on"]:
            waited.append(seconds)  # simulated: ten minutes pass without the test waiting them
        else:
            time.sleep(min(seconds, 0.5))

    monkeypatch.setattr(dlc, "get_job", get_job)
    monkeypatch.setattr(dlc, "stop_job", lambda client, job: stops.append(job))
    monkeypatch.setattr(PaiSupervisor, "wait", wait)
    supervisor = PaiSupervisor("ride-out-1", Registry(registry_path))
    supervisor.run()

    log = capsys.readouterr().out
    assert stops == [] and sum(waited) >= 600 and max(waited) <= 60, (stops, waited)
    assert "refused the credentials" in log and "cannot reach PAI-DLC" in log and "retrying with backoff" in log
    assert f"DLC readable again after {len(waited)} failed call(s)" in log
    assert "trained" in log and status(emu, job_id) == "Succeeded"
    assert Registry(registry_path).get("ride-out-1").state == "succeeded"


def test_cancel_with_the_supervisor_killed_stops_the_dlc_job(emu, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    job_id, directory, registry_path = dlc_run(emu, home, "sleep 600", "orphan-1")
    supervisor = spawn_supervisor(home, "orphan-1", registry_path, directory)
    supervisor.kill()
    supervisor.wait()
    show = cli(home, "runs", "show", "orphan-1").stdout
    assert "running" in show and "failed" not in show, show  # the job still runs: the run is not failed
    cancel = cli(home, "runs", "cancel", "orphan-1")
    assert cancel.returncode == 0 and "orphan-1 cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    assert f"stopped DLC job {job_id}" in cancel.stderr
    wait_until(lambda: status(emu, job_id) == "Stopped", timeout=60)


def test_attach_reattaches_after_the_supervisor_died_and_shows_no_line_twice(emu, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    command = "echo before; sleep 6; echo after-reattach; " + WRITE_MANIFEST
    job_id, directory, registry_path = dlc_run(emu, home, command, "reattach-1")
    supervisor = spawn_supervisor(home, "reattach-1", registry_path, directory)
    wait_until(lambda: "before" in (directory / "job.log").read_text(), timeout=60)
    supervisor.kill()
    supervisor.wait()
    attached = cli(home, "runs", "attach", "reattach-1", timeout=300)
    assert attached.returncode == 0, attached.stderr[-2000:]
    assert attached.stdout.strip().startswith("oss://") and "after-reattach" in attached.stderr
    log = (directory / "job.log").read_text().splitlines()
    assert log.count("before") == 1 and log.count("after-reattach") == 1, log
    assert "succeeded" in cli(home, "runs", "show", "reattach-1").stdout and status(emu, job_id) == "Succeeded"


def _read_until(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """What `proc` wrote on stdout and stderr until `text` appeared in either (or `timeout` passed)."""
    import os
    import select

    seen, deadline = "", time.time() + timeout
    while text not in seen and time.time() < deadline:
        ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 0.5)
        for stream in ready:
            chunk = os.read(stream.fileno(), 65536).decode(errors="replace")
            seen += chunk
    return seen


def test_ctrl_c_on_an_attached_run_detaches_and_says_how_to_come_back(emu, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    job_id, directory, registry_path = dlc_run(emu, home, "echo started; sleep 600", "detach-1")
    spawn_supervisor(home, "detach-1", registry_path, directory)
    attached = subprocess.Popen([*CLI, "runs", "attach", "detach-1"], env=client_env(home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    seen = _read_until(attached, "started", timeout=60)  # attached and following (start-up takes seconds when busy)
    attached.send_signal(signal.SIGINT)
    out, err = attached.communicate(timeout=60)
    err = seen + err
    assert attached.returncode == 130, err
    assert "pai-distil runs attach detach-1" in err and "pai-distil runs cancel detach-1" in err
    time.sleep(2)
    assert status(emu, job_id) == "Running" and "running" in cli(home, "runs", "show", "detach-1").stdout
    assert cli(home, "runs", "cancel", "detach-1").returncode == 0
    wait_until(lambda: status(emu, job_id) == "Stopped", timeout=60)
