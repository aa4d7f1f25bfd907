"""The Docker command line, as the `local` backend, `images` and the code sandbox use it.

The `docker` CLI rather than a Python SDK: it is what users already have, it honours their
contexts and configuration, and it adds no dependency to the client. Every failure to reach
the engine becomes one UserError that says how to start it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from pai_distil.core.errors import UserError

# The Debian base every job image is built on, and the code sandbox's default container image.
BASE_TAG = "pai-distil-base:bookworm"

NOT_RUNNING = ("the Docker engine is not reachable ({why}); start it (`sudo systemctl start docker`, or "
               "`sudo dockerd --bridge=none --iptables=false &` where there is no systemd) or run the job with "
               "`--backend process`")


def binary() -> str:
    found = shutil.which("docker")
    if found is None:
        raise UserError("the `docker` command is not installed; install Docker (`apt-get install docker.io`) "
                        "or run the job with `--backend process`")
    return found


def env() -> dict[str, str]:
    """The client's environment; the classic builder: it needs no buildx plugin and builds offline."""
    return {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CLI_HINTS": "false"}


def docker(*args: str, check: bool = True, timeout: float | None = 60, **kw) -> subprocess.CompletedProcess:
    """Run `docker ARGS`, capturing its output; with `check`, a failure is a UserError of its last line."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run([binary(), *args], text=True, env=kw.pop("env", None) or env(), timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)
    if check and proc.returncode != 0:
        raise UserError(f"`docker {args[0]}` failed: {last_line(proc.stderr) or f'exit code {proc.returncode}'}")
    return proc


def require_engine() -> str:
    """The engine's version; a UserError saying how to start it when it is missing or stopped."""
    try:
        proc = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    except subprocess.TimeoutExpired:
        raise UserError(NOT_RUNNING.format(why="`docker version` did not answer in 20 s")) from None
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        raise UserError(NOT_RUNNING.format(why=last_line(proc.stderr) or "no server version"))
    return version


def image_id(ref: str) -> str | None:
    """The image's id, or None when this engine does not have it."""
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
