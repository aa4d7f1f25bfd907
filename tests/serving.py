"""Helpers for the deployment tests: small checkpoints and `pai-distil deploy local` servers on loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import ROOT, free_socket, stop_process


def micro_checkpoint(dest: Path, seed: int = 0) -> Path:
    """An untrained micro preset saved as a checkpoint artifact (config, weights, tokenizer, template, manifest)."""
    from pai_distil.core.artifacts import write_manifest
    from pai_distil_jobs.models.models import build_preset

    model, tokenizer = build_preset("micro", seed)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    write_manifest(dest)
    return dest


def micro_reward_checkpoint(dest: Path, seed: int = 0) -> Path:
    """An untrained micro reward model checkpoint (weights, reward head, tokenizer, score statistics)."""
    import json

    from pai_distil.core.artifacts import write_manifest
    from pai_distil_jobs.train.reward import load_reward_model
    from pai_distil_jobs.train.reward import STATS

    model, tokenizer = load_reward_model("preset:micro", seed=seed)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / STATS).write_text(json.dumps({"mean": 0.0, "std": 1.0, "max_length": 128}))
    write_manifest(dest)
    return dest


def free_port() -> int:
    with free_socket() as s:
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


@contextlib.contextmanager
def start_local(checkpoint: Path, token: str | None, *args: str, name: str = "student"):
    """`pai-distil deploy local CHECKPOINT` as a subprocess on a free port; yields its base URL (ends in /v1)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    if token is not None:
        env["PAI_DISTIL_SERVE_TOKEN"] = token
    argv = [sys.executable, "-m", "pai_distil", "deploy", "local", str(checkpoint), "--port", str(port),
            "--name", name, "--threads", "1", *args, *([] if token is not None else ["--no-auth"])]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


AK, SK = "test-access-key-id", "test-access-key-secret-not-a-secret"


@contextlib.contextmanager
def start_emulator(data_dir: Path):
    """`pai-distil emulator start` on a free port; yields its base URL (http://127.0.0.1:PORT)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAI_DISTIL_", "ALIBABA_CLOUD_"))}
    env.update(ALIBABA_CLOUD_ACCESS_KEY_ID=AK, ALIBABA_CLOUD_ACCESS_KEY_SECRET=SK)
    proc = subprocess.Popen([sys.executable, "-m", "pai_distil", "emulator", "start", "--port", str(port),
                             "--data-dir", str(data_dir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {proc.stderr.read()}")
            try:
                httpx.get(url + "/api/v2/services", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("emulator did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # its shutdown stops every service instance it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cloud_env(emulator_url: str, **extra) -> dict:
    """The environment of a CLI call against the emulator: credentials and endpoints, as a user sets them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAI_DISTIL_", "ALIBABA_CLOUD_"))}
    env.update(ALIBABA_CLOUD_ACCESS_KEY_ID=AK, ALIBABA_CLOUD_ACCESS_KEY_SECRET=SK,
               PAI_DISTIL_EAS_ENDPOINT=emulator_url, PAI_DISTIL_OSS_ENDPOINT=emulator_url, **extra)
    return env


def cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pai_distil", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
