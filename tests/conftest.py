"""Shared fixtures: real HTTP servers on loopback and a runner for jobs under the job contract."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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


def wait_until(predicate, timeout: float = 300, every: float = 0.2):
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def metric_records(path: Path) -> list[dict]:
    """The complete records of a metrics.jsonl so far (none when it does not exist yet)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def kill_after_a_checkpoint(run_id: str, at_least: int = 8) -> tuple[int, dict[int, dict]]:
    """SIGKILL a training run's job once a step after a checkpoint of step >= `at_least` is logged.
    Returns that checkpoint's step and the records of the steps the kill lost, which a resubmitted
    run must take again, identically."""
    from pai_distil.run.registry import Registry
    from pai_distil_jobs.train.trainer import newest_checkpoint

    run = Registry().get(run_id)
    ckpt_dir, metrics = Path(run.work_dir) / "checkpoints", Path(run.output) / "metrics.jsonl"

    def step(ckpt) -> int:
        return int(ckpt.name.split("-")[1])

    def between_checkpoints() -> bool:
        # a fast machine takes a step in tens of milliseconds: poll often, and say so when the run ended first
        if (r := Registry().get(run_id)).terminal:
            raise AssertionError(f"run {run_id} ended ({r.state}) before a kill between two checkpoints")
        return bool((c := newest_checkpoint(ckpt_dir)) and step(c) >= at_least
                    and metric_records(metrics)[-1]["step"] > step(c))

    wait_until(between_checkpoints, every=0.02)
    os.killpg(os.getpgid(Registry().get(run_id).job_pid), signal.SIGKILL)
    assert wait_until(lambda: (r := Registry().get(run_id)).terminal and r).state == "failed"
    killed_at = step(newest_checkpoint(ckpt_dir))
    lost = {r["step"]: r for r in metric_records(metrics) if r["step"] > killed_at}
    assert killed_at >= at_least and lost
    return killed_at, lost


@pytest.fixture
def one_cot(tmp_path) -> Path:
    """A cots.jsonl of one verified chain: an input a stage accepts where its content does not matter."""
    path = tmp_path / "cots.jsonl"
    path.write_text('{"id": "1", "problem": "1+1", "answer": "2", "thought": "1+1=2", "solution": "2", "correct": true}\n')
    return path


def pairs_file(path: Path, n: int = 24, seed: int = 7) -> Path:
    """Right and wrong answers to synthetic problems, as {"prompt", "chosen", "rejected"} rows."""
    from pai_distil.core import oracle as teacher, world
    from pai_distil_jobs.endpoints.prompts import user_message

    with open(path, "w") as f:
        for p in world.generate_problems(n, seed, levels=[1]):
            right = teacher.respond(p, 2)
            wrong = right.replace(f"{{{p.answer}}}", f"{{{(int(p.answer) + 1) % 10}}}")
            prompt = user_message({"problem": p.text, "answer": p.answer, "domain": "synthetic"})
            f.write(json.dumps({"prompt": prompt, "chosen": right, "rejected": wrong}) + "\n")
    return path


def job_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The `pai-distil job error:` lines a job printed."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pai-distil job error:")]


# -- the Docker tests' job image ----------------------------------------------------------------

REQUIRE = os.environ.get("PAI_DISTIL_REQUIRE_DOCKER") == "1"
WHEELHOUSE = Path(os.environ.get("PAI_DISTIL_WHEELHOUSE") or Path.home() / ".cache/pai-distil/wheelhouse")


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (PAI_DISTIL_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU job image of this code, built once (bootstrapping the base and wheelhouse if needed)."""
    from pai_distil.cloud import images
    from pai_distil.core import dockercli
    from pai_distil.core.errors import UserError

    try:
        dockercli.require_engine()
    except UserError as e:
        _unavailable(f"Docker tests need a running engine: {e.message}")
    if not dockercli.image_id(images.BASE_TAG):
        if not REQUIRE:
            pytest.skip(f"no base image {images.BASE_TAG}; make it with `pai-distil images bootstrap-base` (root, "
                        "a few minutes), then rerun")
        images.bootstrap_base()
    if images._missing_wheels(WHEELHOUSE, images.requirements(images.TARGETS["cpu"])):
        images.wheelhouse(WHEELHOUSE)
    tag = images.build("cpu", wheelhouse_dir=WHEELHOUSE, quiet=True)
    # jobs started by these tests (in subprocesses too) use this image, even if the code is edited meanwhile
    os.environ[images.IMAGE_ENV] = tag
    return tag
