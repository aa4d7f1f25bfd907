"""The run registry: records, lookups by prefix, cache hits, reconciling dead supervisors."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pai_distil import paths
from pai_distil.core.artifacts import write_manifest
from pai_distil.core.errors import UserError
from pai_distil.run.registry import SUPERVISOR_GONE, TERMINAL, Registry, new_run_id


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    return Registry()


def _create(registry: Registry, run_id: str, **kw):
    args = dict(stage="generate", backend="process", cache_key=None, work_dir=None, output=None, log_path=None)
    args.update(kw)
    return registry.create(run_id, **args)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_run_id_is_readable_and_unique():
    ids = {new_run_id("slow-thinking") for _ in range(50)}
    assert all(re.fullmatch(r"slow-thinking-\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids)
    assert len(ids) > 40


def test_database_lives_in_home_and_uses_wal(registry, tmp_path):
    assert registry.path == tmp_path / "home" / "runs.sqlite"
    with sqlite3.connect(registry.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_create_get_update_roundtrip(registry, tmp_path):
    rec = _create(registry, "generate-1", cache_key="k1", work_dir=tmp_path / "w", output=tmp_path / "w" / "out",
                  log_path=tmp_path / "log", pipeline="demo")
    assert rec.state == "queued" and rec.started_at is None and rec.output == str(tmp_path / "w" / "out")
    assert registry.get("generate-1") == rec
    assert registry.update("generate-1", state="running", started_at=123.0, job_pid=42)
    got = registry.get("generate-1")
    assert (got.state, got.started_at, got.job_pid, got.pipeline) == ("running", 123.0, 42, "demo")
    # conditional transition: only from the given states
    assert not registry.update("generate-1", where_state=("queued",), state="cancelled")
    assert registry.update("generate-1", where_state=("running",), state="failed", error="boom", exit_code=3)
    got = registry.get("generate-1")
    assert (got.state, got.error, got.exit_code) == ("failed", "boom", 3) and got.terminal
    with pytest.raises(ValueError):
        registry.update("generate-1", colour="red")
    with pytest.raises(UserError):
        registry.update("generate-1", state="exploded")
    with pytest.raises(UserError, match="already exists"):
        _create(registry, "generate-1")


def test_cached_runs_are_terminal_at_once(registry):
    rec = _create(registry, "generate-c", state="cached")
    assert rec.state in TERMINAL and rec.finished_at is not None and rec.duration == 0.0


def test_get_by_unique_prefix_and_errors(registry):
    _create(registry, "slow-thinking-20261127-081502-3fa2")
    _create(registry, "slow-thinking-20261127-081502-9b01")
    assert registry.get("slow-thinking-20261127-081502-3").id.endswith("3fa2")
    with pytest.raises(UserError, match="matches several runs"):
        registry.get("slow-thinking-")
    with pytest.raises(UserError) as e:
        registry.get("nope")
    assert e.value.message == "no run 'nope'; `pai-distil runs list` shows run ids"
    with pytest.raises(UserError):
        registry.get("slow%")  # no LIKE wildcards


def test_list_newest_first_with_filters(registry):
    for i in range(5):
        _create(registry, f"generate-{i}", stage="generate" if i % 2 == 0 else "evaluate")
    registry.update("generate-4", state="succeeded")
    assert [r.id for r in registry.list()] == [f"generate-{i}" for i in (4, 3, 2, 1, 0)]
    assert [r.id for r in registry.list(limit=2)] == ["generate-4", "generate-3"]
    assert [r.id for r in registry.list(stage="evaluate")] == ["generate-3", "generate-1"]
    assert [r.id for r in registry.list(state="succeeded")] == ["generate-4"]
    assert [r.id for r in registry.list(state="queued", limit=1)] == ["generate-3"]
    with pytest.raises(UserError, match="unknown run state"):
        registry.list(state="bogus")


def test_find_succeeded_needs_a_complete_output(registry, tmp_path):
    assert registry.find_succeeded("key") is None
    old, new, broken = tmp_path / "old", tmp_path / "new", tmp_path / "broken"
    for d in (old, new, broken):
        d.mkdir()
        (d / "data.jsonl").write_text("{}\n")
    write_manifest(old)
    write_manifest(new)
    _create(registry, "generate-old", cache_key="key", output=old)
    registry.update("generate-old", state="succeeded")
    time.sleep(0.01)
    _create(registry, "generate-new", cache_key="key", output=new)
    registry.update("generate-new", state="succeeded")
    time.sleep(0.01)
    _create(registry, "generate-broken", cache_key="key", output=broken)  # no manifest
    registry.update("generate-broken", state="succeeded")
    _create(registry, "generate-failed", cache_key="key", output=new)
    registry.update("generate-failed", state="failed")
    _create(registry, "generate-other", cache_key="other", output=new)
    assert registry.find_succeeded("key").id == "generate-new"
    (new / "manifest.json").unlink()
    assert registry.find_succeeded("key").id == "generate-old"


def test_reconcile_dead_supervisor(registry):
    dead = _dead_pid()
    _create(registry, "generate-dead")
    registry.update("generate-dead", state="running", supervisor_pid=dead)
    _create(registry, "generate-queued-dead")
    registry.update("generate-queued-dead", supervisor_pid=dead)
    _create(registry, "generate-alive")
    registry.update("generate-alive", state="running", supervisor_pid=os.getpid())
    _create(registry, "generate-waiting")  # queued, no supervisor yet: left alone
    _create(registry, "generate-done")
    registry.update("generate-done", state="succeeded", supervisor_pid=dead)

    got = registry.get("generate-dead")
    assert (got.state, got.error) == ("failed", SUPERVISOR_GONE) and got.finished_at is not None
    states = {r.id: r.state for r in registry.list()}
    assert states == {"generate-dead": "failed", "generate-queued-dead": "failed", "generate-alive": "running",
                      "generate-waiting": "queued", "generate-done": "succeeded"}
    # a state filter sees the reconciled state, not the stale one
    assert {r.id for r in registry.list(state="running")} == {"generate-alive"}


WRITER = """
import sys
from pai_distil.run.registry import Registry
reg = Registry(sys.argv[1])
for i in range(40):
    rid = f"{sys.argv[2]}-{i}"
    reg.create(rid, stage="generate", backend="process", cache_key=None, work_dir=None, output=None, log_path=None)
    reg.update(rid, state="running")
    reg.list(limit=5)
    reg.update(rid, state="succeeded")
"""


def test_concurrent_writers_from_several_processes(registry):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(registry.path), f"w{n}"], stderr=subprocess.PIPE)
             for n in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    records = registry.list(limit=1000)
    assert len(records) == 120 and {r.state for r in records} == {"succeeded"}


def test_registry_at_explicit_path(tmp_path):
    reg = Registry(tmp_path / "sub" / "r.sqlite")
    _create(reg, "generate-x")
    assert Path(tmp_path / "sub" / "r.sqlite").is_file() and Registry(reg.path).get("generate-x").id == "generate-x"


def test_manifest_makes_private_temp_file_writes_readable(tmp_path):
    # safetensors writes weights through a private temp file (0600); a serving container that
    # runs as another user must still read a finished artifact
    weights, secret_by_choice = tmp_path / "model.safetensors", tmp_path / "notes.txt"
    weights.write_bytes(b"w")
    weights.chmod(0o600)
    secret_by_choice.write_text("n")
    secret_by_choice.chmod(0o640)
    mask = os.umask(0o022)
    try:
        write_manifest(tmp_path)
    finally:
        os.umask(mask)
    assert weights.stat().st_mode & 0o777 == 0o644
    assert secret_by_choice.stat().st_mode & 0o777 == 0o640
