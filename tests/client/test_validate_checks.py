"""`validate` checks what the job would meet: flash-attention where the job runs, and thinking switches that
switch, rendered from local checkpoints' own chat templates (the real Qwen3 tokenizer files)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from real_models import QWEN25_TEMPLATE, tiny_checkpoint
from test_cli import assert_one_line_error, cli, write

from pai_distil.core.thinking_switch import SOFT_SWITCH_FILE, folder_switch, render_prompt


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    """A Qwen2.5-style checkpoint: its template has no thinking switch."""
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen25") / "ckpt", arch="qwen2", template=QWEN25_TEMPLATE)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen3") / "ckpt")


@pytest.fixture(scope="module")
def soft_student(tmp_path_factory, qwen25):
    """A Qwen2.5-style student trained with /no_think (adaptive-thinking variant y, soft_switch)."""
    import shutil

    dest = tmp_path_factory.mktemp("soft") / "ckpt"
    shutil.copytree(qwen25, dest)
    (dest / SOFT_SWITCH_FILE).write_text(json.dumps({"off": " /no_think", "on": " /think"}))
    return dest


def _evaluate(tmp_path, model, thinking=False):
    return write(tmp_path, "eval.yaml", yaml.safe_dump({"models": [
        {"name": "on", "model": str(model)}, {"name": "off", "model": str(model), "enable_thinking": thinking}]}))


def test_the_client_renders_templates_as_transformers_does(qwen25, qwen3):
    from real_models import qwen_tokenizer

    for template in (None, QWEN25_TEMPLATE):
        tok = qwen_tokenizer(template)
        for flag in (True, False):
            assert render_prompt(tok.chat_template, flag) == tok.apply_chat_template(
                [{"role": "user", "content": "ping"}], tokenize=False, add_generation_prompt=True, enable_thinking=flag)
    assert folder_switch(qwen3) == "template" and folder_switch(qwen25) == "none"
    assert folder_switch(qwen25.parent) is None  # no tokenizer files: nothing to judge


def test_thinking_off_on_a_template_without_the_switch_is_refused_at_validate(tmp_path, qwen25):
    assert_one_line_error(cli("validate", "-s", "evaluate", _evaluate(tmp_path, qwen25)),
                          "models[1] ('off') sets enable_thinking: false", "renders the same prompt with true and false",
                          "drop enable_thinking for it")


def test_thinking_off_where_it_switches_passes_and_a_soft_switch_student_says_how(tmp_path, qwen3, soft_student):
    ok = cli("validate", "-s", "evaluate", _evaluate(tmp_path, qwen3))
    assert ok.returncode == 0 and "note" not in ok.stdout, ok.stderr
    soft = cli("validate", "-s", "evaluate", _evaluate(tmp_path, soft_student))
    assert soft.returncode == 0, soft.stderr
    assert "note: models[1] ('off'): its chat template ignores enable_thinking; thinking is turned off with " \
           "/no_think in the prompt, as it was trained" in soft.stdout


def test_variant_y_on_a_template_without_the_switch_is_refused_before_generate_runs(tmp_path, qwen25):
    stages = {"gen": {"stage": "generate", "config": {"problems": {"n": 4}}},
              "y": {"stage": "adaptive-thinking", "inputs": {"cots": "gen"},
                    "config": {"variant": "y", "student": {"model": str(qwen25)}}}}
    p = write(tmp_path, "p.yaml", yaml.safe_dump({"name": "p", "stages": stages}))
    assert_one_line_error(cli("validate", p), "stage 'y'", "variant y: the chat template of student.model",
                          "ignores enable_thinking", "set no_template_switch: soft_switch")
    assert_one_line_error(cli("run", p, home=tmp_path / "home"), "stage 'y'", "ignores enable_thinking")
    assert not (tmp_path / "home" / "runs.sqlite").exists()  # no stage ran, generate included
    stages["y"]["config"]["no_template_switch"] = "soft_switch"
    p = write(tmp_path, "p.yaml", yaml.safe_dump({"name": "p", "stages": stages}))
    ok = cli("validate", p)
    assert ok.returncode == 0 and "note: stage 'y': variant y: the chat template of" in ok.stdout, ok.stderr


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
def test_flash_attention_without_the_package_is_refused_where_the_job_would_run(tmp_path):
    cfg = write(tmp_path, "cfg.yaml", "train: {attn_implementation: flash_attention_2}\n")
    fragments = ("train.attn_implementation is flash_attention_2", "flash_attn package is not installed where "
                 "--backend process runs the job", "set train.attn_implementation: auto")
    assert_one_line_error(cli("validate", "-s", "slow-thinking", cfg), *fragments)
    assert_one_line_error(cli("submit", "slow-thinking", "-c", cfg, "-i", f"cots={cfg}", "--dry-run",
                              home=tmp_path / "h"), *fragments)
    # a job image may have it: the job checks there, at its start
    assert cli("validate", "-s", "slow-thinking", "-b", "local", cfg).returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_not_installed_is_refused_where_the_job_would_run(tmp_path):
    cfg = write(tmp_path, "cfg.yaml", "train: {report_to: [tensorboard, wandb]}\n")
    fragments = ("train.report_to names wandb", "wandb package is not installed where --backend process runs the job",
                 "pip install wandb")
    assert_one_line_error(cli("validate", "-s", "slow-thinking", cfg), *fragments)
    assert_one_line_error(cli("submit", "grpo", "-c", cfg, "-i", f"student={cfg}", "--dry-run", home=tmp_path / "h"),
                          "train.report_to names wandb")
    assert cli("validate", "-s", "slow-thinking", "-b", "local", cfg).returncode == 0  # the job checks its image
    bad = write(tmp_path, "bad.yaml", "train: {report_to: [comet]}\n")
    assert_one_line_error(cli("validate", "-s", "slow-thinking", bad), "train.report_to")
