"""The client as a user meets it: help, schema, validate, dry runs and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

CLI = [sys.executable, "-m", "pai_distil"]


def cli(*args, home=None, env_extra=None, timeout=120):
    import os

    env = dict(os.environ)
    if home is not None:
        env["PAI_DISTIL_HOME"] = str(home)
    env.update(env_extra or {})
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.mark.parametrize("args", [["--help"], ["submit", "slow-thinking", "--dry-run", "-i", "cots=README.md"]])
def test_client_does_not_import_torch(args):
    code = (
        "import sys\n"
        "from pai_distil.cli import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='pai-distil', standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers', 'trl', 'accelerate', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_schema_prints_json_schema():
    for what in ("pipeline", "job", "slow-thinking", "generate", "evaluate"):
        proc = cli("schema", what)
        assert proc.returncode == 0, proc.stderr
        assert "properties" in json.loads(proc.stdout)


@pytest.mark.parametrize("example", ["slow-thinking", "slow-thinking-small", "adaptive-thinking", "grpo"])
def test_validate_accepts_the_example_pipelines(example):
    assert cli("validate", f"examples/{example}.yaml").returncode == 0


@pytest.mark.parametrize(("example", "stage"), [("slow-thinking-config", "slow-thinking"),
                                                ("evaluate-benchmarks", "evaluate"), ("generate-math", "generate"),
                                                ("refine-shorter", "generate")])
def test_validate_accepts_the_example_stage_configs(example, stage):
    # validate checks the key a config names where the job reads it (DashScope's, for generate-math)
    proc = cli("validate", f"examples/{example}.yaml", "--stage", stage, env_extra={"DASHSCOPE_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stderr


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("config, fragments", [
    ({"train": {"max_steps": "many"}}, ["train.max_steps", '"many"']),
    ({"train": {"max_stepz": 3}}, ["train.max_stepz", "unknown field"]),
    ({"student": {"model": "preset:huge"}}, ["student.model", "preset:tiny"]),
    ({"train": {"learning_rate": -1}}, ["train.learning_rate"]),
    ("train: [unclosed", ["not valid YAML"]),
    ("- a list", ["mapping"]),
])
def test_bad_config_is_one_line_error(tmp_path, config, fragments):
    cfg = write(tmp_path, "cfg.yaml", config)
    cots = write(tmp_path, "cots.jsonl", "")
    proc = cli("submit", "slow-thinking", "--config", cfg, "--input", f"cots={cots}", "--dry-run", home=tmp_path / "h")
    assert_one_line_error(proc, *fragments)


def test_missing_pipeline_field_is_named(tmp_path):
    p = write(tmp_path, "p.yaml", {"name": "x", "stages": {"eval": {"stage": "evaluate", "config": {}}}})
    assert_one_line_error(cli("validate", p), "models", "required")


def test_missing_config_file(tmp_path):
    proc = cli("submit", "slow-thinking", "--config", tmp_path / "nope.yaml", "-i", "cots=README.md", home=tmp_path)
    assert_one_line_error(proc, "nope.yaml", "does not exist")


def test_missing_input_file(tmp_path):
    proc = cli("submit", "slow-thinking", "--input", f"cots={tmp_path / 'missing.jsonl'}", home=tmp_path)
    assert_one_line_error(proc, "cots", "does not exist")


def test_missing_required_input(tmp_path):
    assert_one_line_error(cli("submit", "slow-thinking", home=tmp_path), "needs input 'cots'", "--input cots=")


def test_unknown_and_unavailable_stages(tmp_path):
    assert_one_line_error(cli("submit", "distill-magic", home=tmp_path), "unknown stage")
    assert_one_line_error(cli("submit", "grpo", home=tmp_path), "stage grpo needs input 'problems'")
    assert_one_line_error(cli("submit", "evaluate", "--backend", "local", "-c", "examples/slow-thinking.yaml",
                              home=tmp_path), "field 'models' is required")


def test_pipeline_cycle_and_unknown_input(tmp_path):
    cyc = {"name": "c", "stages": {
        "a": {"stage": "slow-thinking", "inputs": {"cots": "b"}},
        "b": {"stage": "slow-thinking", "inputs": {"cots": "a"}}}}
    assert_one_line_error(cli("validate", write(tmp_path, "c.yaml", cyc)), "cycle")
    bad = {"name": "u", "stages": {"a": {"stage": "generate", "inputs": {"model": "x"}, "config": {}}}}
    assert_one_line_error(cli("validate", write(tmp_path, "u.yaml", bad)), "takes no input 'model'")


def test_dry_run_prints_job_spec_without_starting(tmp_path):
    cots = write(tmp_path, "cots.jsonl", "")
    proc = cli("submit", "slow-thinking", "-i", f"cots={cots}", "--dry-run", home=tmp_path / "h")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["stage"] == "slow-thinking" and spec["inputs"]["cots"] == str(cots)
    assert spec["command"][-2:] == ["-m", "pai_distil_jobs"]
    assert not (tmp_path / "h" / "work").exists()


def test_a_finished_run_is_an_input_by_its_id(tmp_path):
    """`-i student=RUN_ID` takes the run's output, as `deploy local RUN_ID` does; a run that has not
    succeeded, or no such run, is one line."""
    import re

    from pai_distil.core import oracle, world

    home = tmp_path / "h"
    data = tmp_path / "cots.jsonl"
    data.write_text("".join(json.dumps({"problem": p.text, **dict(zip(("thought", "solution"),
                                        world.split_thought(oracle.respond(p, 2)))), "correct": True}) + "\n"
                            for p in world.generate_problems(8, 4, levels=[1])))
    train = write(tmp_path, "t.yaml", "student: {model: 'preset:micro'}\ntrain: {max_steps: 2, batch_size: 4}\n")
    done = cli("submit", "slow-thinking", "-c", train, "-i", f"cots={data}", home=home, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = re.search(r"slow-thinking-\d{8}-\d{6}-[0-9a-f]{4}", done.stdout + done.stderr).group(0)
    ev = write(tmp_path, "e.yaml", "models: [{name: s, input: student}]\nproblems: {n: 2}\nmax_new_tokens: 4\n")
    used = cli("submit", "evaluate", "-c", ev, "-i", f"student={run_id}", home=home, timeout=300)
    assert used.returncode == 0, used.stderr[-2000:]
    spec = json.loads(next((home / "runs").glob("evaluate-*/spec.json")).read_text())
    assert spec["inputs"]["student"] == str(next((home / "work").glob("slow-thinking-*/output")).resolve())
    missing = cli("submit", "evaluate", "-c", ev, "-i", "student=slow-thinking-20200101-000000-abcd", home=home)
    assert_one_line_error(missing, "input 'student'", "no run 'slow-thinking-20200101-000000-abcd'")
