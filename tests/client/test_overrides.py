"""Overrides on the command line, did-you-mean, YAML positions and every problem at once, as a user meets
them (the real CLI, in process)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from pai_distil.cli import cli
from pai_distil.cloud.deploy.eas_config import apply_sets
from pai_distil.core.config import SlowThinkingConfig, validate
from pai_distil.core.errors import UserError


def run(tmp_path, *args):
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), *map(str, args)])


def error(result) -> list[str]:
    assert result.exit_code != 0 and "Traceback" not in result.stderr, result.output
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    return lines


@pytest.fixture
def cots(one_cot):
    return one_cot


def pipeline(tmp_path, cots) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "p", "stages": {
        "student": {"stage": "slow-thinking", "inputs": {"cots": str(cots)}, "config": {"train": {"max_steps": 30}}},
        "eval": {"stage": "evaluate", "inputs": {"student": "student"},
                 "config": {"models": [{"name": "s", "input": "student"}], "problems": {"n": 4}}}}}))
    return str(p)


def test_submit_overrides_win_over_the_file_typed_as_yaml(tmp_path, cots):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {max_steps: 30, learning_rate: 0.005}\n")
    r = run(tmp_path, "submit", "slow-thinking", "-c", cfg, "-i", f"cots={cots}", "--dry-run",
            "train.learning_rate=1e-5", "student.seed=3", "train.lora.r=8")
    assert r.exit_code == 0, r.output
    config = json.loads(r.stdout)["config"]
    assert config["train"]["learning_rate"] == 1e-5 and config["train"]["max_steps"] == 30
    assert config["student"]["seed"] == 3 and config["train"]["lora"]["r"] == 8


def test_an_override_is_validated_like_the_file_with_the_nearest_key(tmp_path, cots):
    lines = error(run(tmp_path, "submit", "slow-thinking", "-i", f"cots={cots}", "--dry-run",
                      "train.learnig_rate=1e-5"))
    assert "unknown field 'train.learnig_rate'; did you mean 'train.learning_rate'?" in lines[0]
    lines = error(run(tmp_path, "submit", "slow-thinking", "-i", f"cots={cots}", "--dry-run", "train.max_steps=many"))
    assert "field 'train.max_steps'" in lines[0] and "with overrides" in lines[0]
    assert "KEY.PATH=VALUE" in error(run(tmp_path, "submit", "slow-thinking", "-i", f"cots={cots}", "max_steps"))[0]


def test_run_overrides_are_scoped_by_stage_id(tmp_path, cots):
    p = pipeline(tmp_path, cots)
    r = run(tmp_path, "run", p, "--dry-run", "student.train.max_steps=200", "student.nodes=2", "eval.problems.n=8")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["student"]["config"]["train"]["max_steps"] == 200 and plan["student"]["nodes"] == 2
    assert plan["eval"]["config"]["problems"]["n"] == 8
    lines = error(run(tmp_path, "run", p, "--dry-run", "studnt.train.max_steps=200"))
    assert "has no stage 'studnt'; did you mean 'student'?" in lines[0]
    lines = error(run(tmp_path, "run", p, "--dry-run", "student.train.max_stepz=200"))
    assert "did you mean 'train.max_steps'?" in lines[0]


def test_did_you_mean_for_stages_inputs_and_stage_ids(tmp_path, cots):
    assert "did you mean 'slow-thinking'?" in error(run(tmp_path, "submit", "slow-thinkin"))[0]
    line = error(run(tmp_path, "submit", "slow-thinking", "-i", f"cot={cots}", "--dry-run"))[0]
    assert "takes no input 'cot'; did you mean 'cots'?" in line and "needs input" not in line
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "p", "stages": {
        "cots-gen": {"stage": "generate", "config": {"problems": {"n": 2}}},
        "student": {"stage": "slow-thinking", "inputs": {"cots": "cots-gen2"}}}}))
    line = error(run(tmp_path, "validate", p))[0]
    assert "input 'cots' names stage 'cots-gen2', which this pipeline does not have; did you mean 'cots-gen'?" in line
    assert "does not exist" not in line


def test_yaml_errors_keep_their_line_and_column(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 30\n   learning_rate: 1e-5\n")
    line = error(run(tmp_path, "validate", "-s", "slow-thinking", cfg))[0]
    assert "is not valid YAML: line 3, column 17: mapping values are not allowed here" in line


def test_every_problem_is_shown_at_once_one_per_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {max_steps: 0, learnig_rate: 1e-5, batch_size: many}\nstudnt: {}\n")
    lines = error(run(tmp_path, "validate", "-s", "slow-thinking", cfg))
    assert len(lines) == 4 and "(and 3 more below)" in lines[0], lines
    text = "\n".join(lines)
    for part in ("train.max_steps", "did you mean 'train.learning_rate'?", "train.batch_size",
                 "did you mean 'student'?"):
        assert part in text
    many = {"train": {f"x{i}": 1 for i in range(15)}}
    with pytest.raises(UserError) as e:
        validate(SlowThinkingConfig, many, "c")
    assert len(e.value.message.splitlines()) == 11 and e.value.message.endswith("... 5 more")


def test_hf_names_are_aliases_and_per_device_batch_gives_the_formula():
    t = validate(SlowThinkingConfig, {"train": {"save_steps": 50, "logging_steps": 5, "save_total_limit": 3,
                                                "num_train_epochs": 2, "lr_scheduler_type": "linear"}}, "c").train
    assert (t.checkpoint_every, t.log_every, t.keep_checkpoints, t.epochs, t.lr_scheduler) == (50, 5, 3, 2, "linear")
    for bad, words in [({"per_device_train_batch_size": 4}, "batch_size = per-device batch x processes"),
                       ({"save_steps": 5, "checkpoint_every": 5}, "another name of a field given too"),
                       ({"epochs": 1, "max_steps": 10}, "give train.epochs or train.max_steps, not both"),
                       ({"lr_scheduler": "constant", "schedule_steps": 9}, "drop schedule_steps")]:
        with pytest.raises(UserError, match=words):
            validate(SlowThinkingConfig, {"train": bad}, "c")


def test_extra_passes_through_but_not_over_our_fields():
    t = validate(SlowThinkingConfig, {"train": {"extra": {"adam_beta1": 0.85, "max_grad_norm": 0.5}}}, "c").train
    assert t.extra == {"adam_beta1": 0.85, "max_grad_norm": 0.5}
    with pytest.raises(UserError) as e:
        validate(SlowThinkingConfig, {"train": {"extra": {"learning_rate": 1e-4, "save_strategy": "no"}}}, "c")
    assert "learning_rate (set train.learning_rate instead), save_strategy (the job sets it)" in e.value.message


def test_deploy_set_uses_the_same_parser():
    config = {"metadata": {"instance": 1}, "containers": [{"image": "a", "port": 8000}]}
    apply_sets(config, ("metadata.instance=2", "containers.0.image=b:1", "containers[0].port=9000",
                        "metadata.rpc.keepalive=600000", "metadata.name=x"))
    assert config == {"metadata": {"instance": 2, "rpc": {"keepalive": 600000}, "name": "x"},
                      "containers": [{"image": "b:1", "port": 9000}]}
    with pytest.raises(UserError, match="'3' is not an index of a list of 1 item"):
        apply_sets(config, ("containers.3.image=c",))
