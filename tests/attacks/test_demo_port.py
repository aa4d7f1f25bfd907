"""The demo must talk to its own teacher: a port another server holds is refused in one line
(before, the demo's health check succeeded against the stranger and the pipeline failed later
with the stranger's 401), and the teacher's log lives under the pai-distil home, not at a fixed
/tmp path. `--dry-run` is passed through to `pai-distil run`, so nothing trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, serve_asgi


def demo(home: Path, port: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAI_DISTIL_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if port is not None:
        env["PAI_DISTIL_TEACHER_PORT"] = str(port)
    return subprocess.run(["bash", str(ROOT / "examples" / "demo.sh"), "--dry-run"], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_port_another_server_holds_is_refused_in_one_line(tmp_path):
    from pai_distil.synthetic.server import create_app

    with serve_asgi(create_app(api_key="a-stranger")) as stranger:  # answers /health like the demo's teacher
        port = int(stranger.rsplit(":", 1)[1])
        proc = demo(tmp_path / "home", port)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"127.0.0.1:{port}" in lines[0], proc.stderr
    assert "PAI_DISTIL_TEACHER_PORT" in lines[0]


def test_the_demo_serves_on_the_port_it_is_given_and_logs_under_the_home(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = demo(tmp_path / "home", port)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'"base_url": "http://127.0.0.1:{port}/v1"' in proc.stdout
    log = tmp_path / "home" / "demo" / "teacher.log"
    assert log.is_file() and str(log) in proc.stdout
