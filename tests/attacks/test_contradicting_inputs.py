"""Inputs that contradict the config, as a careless user gives them: a `problems` file the config's
synthetic `problems` would never read, an input named twice, a whole folder (all of /tmp) to hash.
The first two are refused in one line; the third is announced and shows its progress."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pai_distil.run import submission

CLI = [sys.executable, "-m", "pai_distil"]


def cli(*args, home):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PAI_DISTIL_HOME": str(home)})


def one_line_error(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


EVALUATE = "problems: {n: 20}\nmodels: [{name: m, model: 'preset:micro'}]\n"


@pytest.mark.parametrize("stage, config, content", [
    ("generate", "problems: {n: 200}\n", b""), ("generate", "problems: {n: 200}\n", b"\x00\xff\xfe binary"),
    ("generate", "problems: {n: 200}\n", b'{"problem": "caf\xe9"}\n'), ("evaluate", EVALUATE, b'{"problem": "1"}\n'),
])
def test_a_problems_input_the_config_never_reads_is_refused(tmp_path, stage, config, content):
    (tmp_path / "cfg.yaml").write_text(config)
    (tmp_path / "problems.jsonl").write_bytes(content)
    proc = cli("submit", stage, "-c", tmp_path / "cfg.yaml", "-i", f"problems={tmp_path / 'problems.jsonl'}",
               "--dry-run", home=tmp_path / "home")
    error = one_line_error(proc)
    assert "input 'problems' would never be read" in error and "config's `problems`" in error, error


def test_an_input_given_twice_is_refused(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        p.write_text('{"id": "1", "problem": "1+1", "answer": "2"}\n')
    proc = cli("submit", "slow-thinking", "-i", f"cots={a}", "-i", f"cots={b}", "--dry-run", home=tmp_path / "home")
    assert "--input cots is given twice" in one_line_error(proc)


def test_hashing_a_large_input_is_announced_and_shows_progress(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "not-the-data"
    for i in range(30):
        (folder / str(i % 3)).mkdir(parents=True, exist_ok=True)
        (folder / str(i % 3) / f"f{i}").write_bytes(bytes(1000))
    monkeypatch.setattr(submission, "WARN_FILES", 20)
    monkeypatch.setattr(submission, "PROGRESS_S", 0.0)
    key = submission.input_digest(str(folder), "cots")
    err = capsys.readouterr().err
    assert "input 'cots'" in err and "holds 30 file(s)" in err and "no manifest.json" in err, err
    assert "hashing input 'cots': 0.0 of 0.0 GB (100 %)" in err, err
    monkeypatch.setattr(submission, "WARN_FILES", 30)
    assert submission.input_digest(str(folder), "cots") == key  # below both limits: quiet
    assert capsys.readouterr().err == ""
