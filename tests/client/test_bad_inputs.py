"""Bad inputs as a careless user or an attacker gives them: each ends with one `error:` line and a
non-zero exit, no traceback, and nothing recorded as succeeded. Inputs are checked against their
manifests before a run starts and before a cache hit is trusted."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from conftest import start_teacher
from test_cli import assert_one_line_error, cli, write

from pai_distil.core.artifacts import write_manifest


def artifact(tmp_path, name: str = "cots", text: str = '{"id": "a", "problem": "1+1", "answer": "2"}\n'):
    """A folder with cots.jsonl and its manifest, as generate writes it."""
    d = tmp_path / name
    d.mkdir()
    (d / "cots.jsonl").write_text(text)
    write_manifest(d)
    return d


def states(home) -> list[str]:
    """The runs' states, oldest first; none when no run was ever recorded."""
    if not (home / "runs.sqlite").exists():
        return []
    with sqlite3.connect(home / "runs.sqlite") as db:
        return [s for (s,) in db.execute("SELECT state FROM runs ORDER BY created_at, rowid")]


@pytest.mark.parametrize("text, fragments", [
    (b"train:\n  max_steps: 3\n  note: caf\xe9\n", ["not UTF-8 text", "byte 33"]),
    (b"train:\n  max_steps: 3\n  max_steps: 30\n", ["'max_steps' appears twice", "line 3"]),
    (b"train:\n  learning_rate: .inf\n", ["train.learning_rate", "finite"]),
    (b"train:\n  learning_rate: .nan\n", ["train.learning_rate", "finite"]),
    (b"student:\n  model: ./no-such-checkpoint\n", ["student.model", "no checkpoint directory"]),
])
def test_bad_config_files_are_one_line(tmp_path, text, fragments):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(text)
    proc = cli("submit", "slow-thinking", "-c", cfg, "-i", f"cots={artifact(tmp_path)}", home=tmp_path / "h")
    assert_one_line_error(proc, *fragments)


def test_absurd_numbers_in_json_are_one_line(tmp_path):
    for field in ("max_steps", "warmup_steps"):
        cfg = write(tmp_path, "cfg.json", json.dumps({"train": {field: 1e29}}))
        assert_one_line_error(cli("validate", "-s", "grpo", cfg), f"train.{field}", "1e+29")
    cfg = write(tmp_path, "dup.json", '{"train": {"max_steps": 3},\n "seed": 1,\n "train": {}}')
    assert_one_line_error(cli("validate", "-s", "slow-thinking", cfg), "'train' appears twice", "line 3")


def test_a_warmup_as_long_as_the_run_is_refused_at_validate(tmp_path):
    cfg = write(tmp_path, "cfg.yaml", "train: {max_steps: 20, warmup_steps: 30}\n")
    assert_one_line_error(cli("validate", "-s", "slow-thinking", cfg), "train", "warmup_steps = 30 is not below "
                          "max_steps = 20", "set warmup_steps below max_steps (e.g. 2)")


def test_a_run_id_given_as_a_model_says_how_to_use_the_run(tmp_path):
    """A run id is shaped like a hub id: unchecked, the job would look for it on the hub and fail there."""
    cfg = write(tmp_path, "cfg.yaml", "models:\n  - {name: s, model: slow-thinking-20261207-232752-62ab}\n"
                "problems: {n: 4}\n")
    assert_one_line_error(cli("validate", "-s", "evaluate", cfg), "models.0.model", "is a run id, not a model",
                          "-i student=slow-thinking-20261207-232752-62ab")


def test_duplicate_stage_ids_are_refused_with_their_line(tmp_path):
    p = write(tmp_path, "p.yaml", "name: p\nstages:\n  gen:\n    stage: generate\n  gen:\n    stage: score\n")
    assert_one_line_error(cli("validate", p), "'gen' appears twice", "line 5")


def test_an_unusable_home_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(cli("runs", "list", home=tmp_path / "file" / "home"), "run registry", "Not a directory")
    bad = tmp_path / "bad-home"
    bad.mkdir()
    (bad / "runs.sqlite").write_bytes(b"not a database at all" * 100)
    assert_one_line_error(cli("runs", "list", home=bad), "run registry", "not a database")


@pytest.mark.parametrize("manifest", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"files": [{"path": "a"}]}'])
def test_an_invalid_manifest_is_one_line(tmp_path, manifest):
    d = artifact(tmp_path)
    (d / "manifest.json").write_bytes(manifest)
    proc = cli("submit", "slow-thinking", "-i", f"cots={d}", "--dry-run", home=tmp_path / "h")
    assert_one_line_error(proc, "input 'cots'", "not a valid manifest")


def test_an_input_edited_after_its_manifest_is_refused(tmp_path):
    d = artifact(tmp_path)
    home = tmp_path / "h"
    assert cli("submit", "slow-thinking", "-i", f"cots={d}", "--dry-run", home=home).returncode == 0
    text = (d / "cots.jsonl").read_text()
    (d / "cots.jsonl").write_text(text.replace('"2"', '"3"'))  # same size, new content
    for force in ([], ["--force"]):
        proc = cli("submit", "slow-thinking", "-i", f"cots={d}", *force, home=home)
        assert_one_line_error(proc, "input 'cots'", "cots.jsonl is missing or changed")
    assert states(home) == []  # nothing started
    # the file itself, passed as the input, is what the user means to train on
    assert cli("submit", "slow-thinking", "-i", f"cots={d / 'cots.jsonl'}", "--dry-run", home=home).returncode == 0


def test_a_binary_cots_file_fails_the_run_with_one_line(tmp_path):
    cots = tmp_path / "cots.jsonl"
    cots.write_bytes(b"\x89PNG\x00\xff" + bytes(range(128, 256)) * 4)
    cfg = write(tmp_path, "cfg.yaml", {"student": {"model": "preset:micro"}, "train": {"max_steps": 1}})
    home = tmp_path / "h"
    proc = cli("submit", "slow-thinking", "-c", cfg, "-i", f"cots={cots}", home=home, timeout=300)
    assert_one_line_error(proc, "row 1 is not UTF-8 text")
    assert states(home) == ["failed"]


def test_an_edited_cached_output_is_not_a_cache_hit(tmp_path):
    home = tmp_path / "h"
    with start_teacher(api_key=None) as t:
        cfg = write(tmp_path, "gen.yaml", {"teacher": {"base_url": t.base_url, "max_retries": 0},
                                           "problems": {"n": 4, "seed": 3}})
        first = cli("submit", "generate", "-c", cfg, home=home, timeout=300)
        assert first.returncode == 0, first.stderr
        out = first.stdout.strip().splitlines()[-1]
        again = cli("submit", "generate", "-c", cfg, home=home)
        assert "cache hit" in again.stderr
        with open(f"{out}/cots.jsonl", "a") as f:
            f.write(json.dumps({"id": "planted", "problem": "x", "answer": "y"}) + "\n")
        rerun = cli("submit", "generate", "-c", cfg, home=home, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "not a cache hit" in rerun.stderr and "cots.jsonl is missing or changed" in rerun.stderr
    assert "planted" not in open(f"{out}/cots.jsonl").read()
    assert states(home) == ["succeeded", "cached", "succeeded"]


def test_yaml_loader_still_reads_anchors_and_merges(tmp_path):
    p = write(tmp_path, "p.yaml", "base: &b {max_steps: 3}\ntrain:\n  <<: *b\n")
    from pai_distil.core.config import read_mapping

    assert read_mapping(p) == yaml.safe_load(p.read_text())
