"""The Python SDK as a notebook uses it: the README's example run as written (a real micro slow-thinking job,
torch never imported by the caller), pipelines, `submit -d` for scripts, and errors as exceptions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import cli
from test_process_backend import FAILING_JOB, SLEEPING_JOB, home, kill_group, registry, start, wait_state  # noqa: F401

import pai_distil
from pai_distil import Pipeline, RunFailed, Stage, UserError, runs, submit

ROOT = Path(__file__).resolve().parents[2]
API = {"Pipeline", "Run", "RunFailed", "Stage", "UserError", "runs", "submit"}
CONFIG = {"student": {"model": "preset:micro"}, "train": {"batch_size": 4, "max_steps": 2}}


def readme_example() -> str:
    """The code block under the README's `## The Python SDK`, exactly as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The Python SDK"):]
    start_at = section.index("```python\n") + len("```python\n")
    return section[start_at:section.index("```", start_at)]


def write_cots(folder: Path) -> Path:
    from pai_distil.core import oracle, world

    rows = [{"problem": p.text, **dict(zip(("thought", "solution"), world.split_thought(oracle.respond(p, 2)))),
             "correct": True} for p in world.generate_problems(8, 4, levels=[1])]
    path = folder / "cots.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The README example, run in a fresh Python in a folder holding its cots.jsonl: (folder, home, run id)."""
    folder = tmp_path_factory.mktemp("sdk")
    write_cots(folder)
    home_dir = folder / "home"
    check = ("\nimport sys\nheavy = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]\n"
             "assert not heavy, heavy\nprint('RUN', run.id)\n")
    proc = subprocess.run([sys.executable, "-c", readme_example() + check], cwd=folder, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PAI_DISTIL_HOME": str(home_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # quiet by default
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("succeeded ") and lines[0].endswith("/output")
    assert lines[1].startswith("Progress(task='train', done=2, total=2, loss=")
    return folder, home_dir, re.search(r"^RUN (\S+)$", proc.stdout, re.M)[1]


def test_readme_example_trains_and_reads_the_output(trained, monkeypatch):
    folder, home_dir, run_id = trained
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home_dir))
    run = runs.get(run_id[:-2])  # a unique prefix names it
    assert run.id == run_id and run.state == "succeeded" and run.stage == "slow-thinking"
    assert (Path(run.output) / "manifest.json").is_file() and (Path(run.output) / "config.json").is_file()
    assert "artifact complete" in run.logs()


def test_pipeline_run_with_overrides_reuses_the_same_work(trained, monkeypatch):
    folder, home_dir, run_id = trained
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home_dir))
    monkeypatch.chdir(folder)
    config = {**CONFIG, "train": {"batch_size": 4, "max_steps": 50}}
    (folder / "p.yaml").write_text(json.dumps({"name": "sdk", "stages": {
        "student": {"stage": "slow-thinking", "config": config, "inputs": {"cots": "cots.jsonl"}}}}))
    pipeline = Pipeline.from_yaml(folder / "p.yaml")
    assert pipeline.stages() == ["student"]
    done = pipeline.run(overrides={"student.train.max_steps": 2})  # the README's run, by content: a cache hit
    assert list(done) == ["student"] and done["student"].state == "cached"
    assert done["student"].output == runs.get(run_id).output


def test_submit_detached_prints_the_run_id_on_stdout(trained):
    folder, home_dir, run_id = trained
    (folder / "t.json").write_text(json.dumps(CONFIG))
    proc = cli("submit", "slow-thinking", "-c", folder / "t.json", "-i", f"cots={folder / 'cots.jsonl'}", "-d",
               "--force", home=home_dir)
    assert proc.returncode == 0, proc.stderr
    new_id = proc.stdout.strip()
    assert re.fullmatch(r"slow-thinking-\d{8}-\d{6}-[0-9a-f]{4}", new_id) and new_id != run_id
    assert "output: " in proc.stderr
    waited = subprocess.run([sys.executable, "-c", f"import pai_distil; print(pai_distil.runs.get({new_id!r}).wait().state)"],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PAI_DISTIL_HOME": str(home_dir)})
    assert waited.stdout.strip() == "succeeded", waited.stderr[-2000:]


def test_the_api_is_visible_and_torch_free():
    assert API <= set(dir(pai_distil)) and set(pai_distil.__all__) == API
    code = ("import pai_distil, sys\nfrom pai_distil import Stage, Pipeline, submit, runs\n"
            "assert 'torch' not in sys.modules and callable(submit) and callable(runs.list)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    with pytest.raises(AttributeError):
        pai_distil.nothing_here  # noqa: B018


def test_mistakes_are_user_errors_before_anything_starts(home, tmp_path):
    with pytest.raises(UserError, match="unknown stage 'slow-thinkin'"):
        submit("slow-thinkin")
    with pytest.raises(UserError, match="train.max_steps"):
        Stage("slow-thinking", {"train": {"max_steps": "many"}}, {"cots": str(write_cots(tmp_path))}).prepare()
    with pytest.raises(UserError, match="needs input 'cots'"):
        submit("slow-thinking", CONFIG)
    assert runs.list() == []


def test_wait_raises_the_jobs_error_and_times_out(registry):
    failed = start(registry, FAILING_JOB)
    with pytest.raises(RunFailed, match="input 'cots' holds no rows; run generate first"):
        runs.get(failed.id).wait(timeout=60)
    assert runs.get(failed.id).output is None and runs.get(failed.id).state == "failed"
    sleeping = runs.get(start(registry, SLEEPING_JOB, stage="score").id)
    try:
        with pytest.raises(TimeoutError, match="still"):
            sleeping.wait(timeout=0.5)
        assert sleeping.cancel().state == "cancelled"
    finally:
        kill_group(registry.get(sleeping.id).job_pid)
