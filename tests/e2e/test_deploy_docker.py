"""`pai-distil deploy local --docker`: the CPU serving image, run on the host network like the process server."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import openai
import pytest

from conftest import ROOT
from pai_distil.cloud import images
from pai_distil.core import dockercli
from serving import free_port, micro_checkpoint, wait_healthy

pytestmark = pytest.mark.slow
TOKEN = "docker-serve-token-not-a-secret"


@pytest.fixture(scope="module")
def serve_image(cpu_image):  # noqa: F811 - the fixture imported above
    return images.build("serve-cpu", base=cpu_image, quiet=True)


def test_serving_image_answers_and_leaves_no_container(serve_image, tmp_path):
    ckpt = micro_checkpoint(tmp_path / "student")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}, "PAI_DISTIL_SERVE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "pai_distil", "deploy", "local", str(ckpt), "--docker",
                             "--image", serve_image, "--port", str(port), "--name", "student"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        base = f"http://127.0.0.1:{port}/v1"
        r = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0).chat.completions.create(
            model="student", messages=[{"role": "user", "content": "Start with 3. Add 4. Work modulo 10."}],
            max_tokens=8, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
        assert httpx.get(base + "/models").status_code == 401
        user = dockercli.docker("inspect", "--format", "{{.Config.User}}", f"pai-distil-serve-{port}").stdout.strip()
        assert user == f"{os.getuid()}:{os.getgid()}"  # the checkpoint's owner, who can read its 0600 weights
        assert TOKEN not in dockercli.docker("image", "inspect", serve_image).stdout
    finally:
        proc.terminate()
        proc.wait(60)
    left = dockercli.docker("ps", "-aq", "--filter", f"name=pai-distil-serve-{port}").stdout.split()
    assert left == []
