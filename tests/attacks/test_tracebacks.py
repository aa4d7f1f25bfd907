"""Mistakes that used to end in a traceback: each is now one `error:` line naming the fix and a
non-zero exit. Inputs that are not data (a device, a FIFO), a data artifact or an empty folder
given as a checkpoint, a registry on a full disk, damaged checkpoints given to `deploy local`,
YAML nested thousands deep, and numeric settings in the environment that are not numbers."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from serving import micro_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
from test_cli import CLI, assert_one_line_error, cli  # noqa: E402

from pai_distil.core.artifacts import write_manifest  # noqa: E402
from pai_distil.core.errors import UserError  # noqa: E402

TRAIN = "student: {model: 'preset:micro'}\ntrain: {max_steps: 1}\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return micro_checkpoint(tmp_path_factory.mktemp("ckpt") / "student")


def cots(tmp_path: Path, rows: list[dict]) -> Path:
    d = tmp_path / "cots"
    d.mkdir()
    (d / "cots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_manifest(d)
    return d


def test_a_device_or_a_fifo_as_input_is_one_line(tmp_path):
    (tmp_path / "st.yaml").write_text(TRAIN)
    os.mkfifo(tmp_path / "fifo")
    for path in ("/dev/null", tmp_path / "fifo"):
        proc = cli("submit", "slow-thinking", "-c", tmp_path / "st.yaml", "-i", f"cots={path}", home=tmp_path / "h")
        assert_one_line_error(proc, "input 'cots'", "neither a file nor a directory")


def test_an_empty_folder_or_a_cots_artifact_as_student_is_one_line(tmp_path):
    (tmp_path / "st.yaml").write_text(TRAIN)
    data = cots(tmp_path, [{"problem": "p", "thought": "t", "solution": "s", "answer": "1", "correct": True}])
    (tmp_path / "empty").mkdir()
    for student in (tmp_path / "empty", data):
        proc = cli("submit", "slow-thinking", "-c", tmp_path / "st.yaml", "-i", f"cots={data}",
                   "-i", f"student={student}", home=tmp_path / "h")
        assert_one_line_error(proc, "input 'student'", "no config.json")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nstages:\n  a: {stage: generate, config: {teacher: {base_url: 'http://127.0.0.1:9/v1', "
                        "model: oracle}, problems: {n: 2}}}\n  b: {stage: slow-thinking, inputs: {cots: a, student: a},"
                        " config: {student: {model: 'preset:micro'}}}\n")
    assert_one_line_error(cli("run", pipeline, "--dry-run", home=tmp_path / "h"), "input 'student'", "no checkpoint")


def test_messages_as_a_string_is_one_line(tmp_path):
    (tmp_path / "st.yaml").write_text(TRAIN)
    data = cots(tmp_path, [{"messages": "hello"}])
    proc = cli("submit", "slow-thinking", "-c", tmp_path / "st.yaml", "-i", f"cots={data}", home=tmp_path / "h",
               timeout=300)
    assert proc.returncode != 0
    log = "".join(p.read_text() for p in (tmp_path / "h").rglob("*.log"))
    assert "Traceback" not in proc.stderr + log, log
    assert "messages" in proc.stderr, proc.stderr


def _full_disk(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_at_submit_is_one_line(tmp_path):
    home = tmp_path / "h"
    assert cli("runs", "list", home=home).returncode == 0
    # A reader holding an old snapshot keeps the registry's write-ahead log from being rewound, so the
    # submit's INSERT must append past the size limit: what a full disk does to sqlite.
    db = sqlite3.connect(home / "runs.sqlite", isolation_level=None)
    db.execute("CREATE TABLE filler (b BLOB)")
    db.execute("INSERT INTO filler VALUES (?)", (b"x" * 200_000,))
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM runs").fetchall()
    (tmp_path / "gen.yaml").write_text("teacher: {base_url: 'http://127.0.0.1:9/v1', model: oracle}\nproblems: {n: 2}\n")
    try:
        proc = subprocess.run([*CLI, "submit", "generate", "-c", str(tmp_path / "gen.yaml"), "--detach"],
                              capture_output=True, text=True, env=dict(os.environ, PAI_DISTIL_HOME=str(home)),
                              preexec_fn=_full_disk(64 * 1024), timeout=120)
    finally:
        db.close()
    assert_one_line_error(proc, "run registry", "free space")


def test_deploy_local_of_a_damaged_checkpoint_is_one_line(tmp_path, checkpoint):
    import shutil

    def damaged(name: str, hurt) -> Path:
        d = tmp_path / name
        shutil.copytree(checkpoint, d)
        hurt(d)
        return d

    cases = [
        (damaged("no-weights", lambda d: (d / "model.safetensors").write_bytes(b"")), "is empty"),
        (damaged("bad-config", lambda d: (d / "config.json").write_text('{"model_type": ')), "not valid JSON"),
        (damaged("bad-header", lambda d: _overwrite(d / "model.safetensors", 8, b"garbage!")), "header"),
        (damaged("huge-header", lambda d: _overwrite(d / "model.safetensors", 0, (2**40).to_bytes(8, "little"))),
         "header length"),
    ]
    for folder, fragment in cases:
        proc = cli("deploy", "local", folder, "--no-auth", "--port", "9", timeout=60)
        assert_one_line_error(proc, str(folder.name), fragment)


def _overwrite(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize("text", ["a: " + "[" * 5000 + "]" * 5000, "".join("  " * i + "k:\n" for i in range(5000))])
def test_yaml_nested_thousands_deep_is_one_line(tmp_path, text):
    (tmp_path / "deep.yaml").write_text(text)
    assert_one_line_error(cli("validate", "-s", "generate", tmp_path / "deep.yaml"), "nests too deeply")


@pytest.mark.parametrize("name", ["PAI_DISTIL_STOP_GRACE_S", "PAI_DISTIL_MAX_BODY_MB"])
def test_a_numeric_setting_that_is_no_number_stops_a_command_in_one_line(tmp_path, name):
    for args in (["runs", "list"], ["teacher", "serve", "--synthetic", "--no-auth", "--port", "9"]):
        proc = cli(*args, home=tmp_path / "h", env_extra={name: "abc"})
        assert_one_line_error(proc, name, "'abc'", "unset it")
    for value in ("1e308", "nan", "-1"):  # 1e308 MiB overflowed the byte count it becomes
        assert_one_line_error(cli("runs", "list", home=tmp_path / "h", env_extra={name: value}), name, repr(value))


def test_a_server_reads_its_body_limit_as_it_is_built(monkeypatch):
    """Not on its first request, where a bad value was a 500 with a traceback on every request."""
    from pai_distil.synthetic.server import create_app

    monkeypatch.setenv("PAI_DISTIL_MAX_BODY_MB", "abc")
    with pytest.raises(UserError, match="PAI_DISTIL_MAX_BODY_MB"):
        create_app(api_key=None)


def test_a_supervisor_reads_its_grace_as_it_starts(monkeypatch, tmp_path):
    from pai_distil.backends.supervisor import Supervisor
    from pai_distil.run.registry import Registry

    monkeypatch.setenv("PAI_DISTIL_STOP_GRACE_S", "2.5")
    assert Supervisor("r", Registry(tmp_path / "runs.sqlite")).grace_s == 2.5
    monkeypatch.setenv("PAI_DISTIL_STOP_GRACE_S", "abc")
    with pytest.raises(UserError, match="PAI_DISTIL_STOP_GRACE_S"):
        Supervisor("r", Registry(tmp_path / "runs.sqlite"))
