"""Shared fixtures: real HTTP servers on loopback and a runner for jobs under the job contract."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_API_KEY = "test-key-not-a-secret"


def stop_process(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM a server started by a test, then SIGKILL it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_socket() -> socket.socket:
    """A bound loopback socket on a free port, handed to the server so no other process can race for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_asgi(app):
    """Run an ASGI app with uvicorn in a background thread; yields its base URL (no /v1)."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class RunningTeacher:
    base_url: str  # ends in /v1
    api_key: str | None
    app: object

    @property
    def stats(self):
        return self.app.state.stats

    @property
    def requests(self) -> int:
        """Chat completion requests received so far (injected failures included)."""
        return self.stats.requests


@contextlib.contextmanager
def start_teacher(api_key: str | None = TEST_API_KEY, **kw):
    """The synthetic teacher (pai_distil.synthetic.server) on a free loopback port."""
    from pai_distil.synthetic.server import create_app

    app = create_app(api_key, **kw)
    with serve_asgi(app) as url:
        yield RunningTeacher(base_url=f"{url}/v1", api_key=api_key, app=app)


@pytest.fixture
def synthetic_teacher():
    with start_teacher() as t:
        yield t


@pytest.fixture
def teacher_factory():
    """Start teachers with custom options (`fail_rate`, `error_rate`, ...); all stop after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(start_teacher(**kw))


def run_job(stage: str, config: dict, output_dir, inputs: dict | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m pai_distil_jobs` under the job contract, as every backend does."""
    output_dir = Path(output_dir)
    fd, config_path = tempfile.mkstemp(prefix=f"pai-distil-{stage}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    job_env.update({
        "PAI_DISTIL_STAGE": stage,
        "PAI_DISTIL_RUN_ID": f"test-{stage}",
        "PAI_DISTIL_CONFIG": config_path,
        "PAI_DISTIL_OUTPUT": str(output_dir),
        "PAI_DISTIL_CHECKPOINT_DIR": str(output_dir.parent / f"{output_dir.name}-checkpoints"),
        "PYTHONUNBUFFERED": "1",
    })
    for name, path in (inputs or {}).items():
        job_env["PAI_DISTIL_INPUT_" + name.upper().replace("-", "_")] = str(path)
    job_env.update(env or {})
    try:
        return subprocess.run([sys.executable, "-m", "pai_distil_jobs"], env=job_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(config_path)


def job_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The `pai-distil job error:` lines a job printed."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pai-distil job error:")]
