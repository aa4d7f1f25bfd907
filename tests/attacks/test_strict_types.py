"""Lenient coercions refused: a boolean or a quoted number where a config wants a number (YAML's
`1e-5`, a string to YAML 1.1, still reads as the float it is), `"no"` or `1` where it wants a
boolean, `--token` with `--no-auth`, flags a dry run would drop, keys and tables of config.toml that
no setting has (with the nearest name), and stray files of the working tree in an image's build
context (in a checkout, only what git tracks goes in)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serving import micro_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
from test_cli import assert_one_line_error, cli  # noqa: E402


@pytest.mark.parametrize("text, fragments", [
    ("student: {model: 'preset:micro', seed: true}\n", ["student.seed", "true", "not a number"]),
    ("train: {max_steps: '5'}\n", ["train.max_steps", '"5"', "unquoted"]),
    ("train: {learning_rate: 'fast'}\n", ["train.learning_rate", '"fast"']),
    ("train: {learning_rate: '0.5'}\n", ["train.learning_rate", '"0.5"']),
    ("train: {max_steps: true}\n", ["train.max_steps", "true"]),
    ("require_correct: 'no'\n", ["require_correct", '"no"', "not a boolean"]),  # 'no' and 1 are no booleans
    ("require_correct: 1\n", ["require_correct", "1", "true or false"]),
])
def test_booleans_and_quoted_numbers_are_no_numbers(tmp_path, text, fragments):
    (tmp_path / "c.yaml").write_text(text)
    assert_one_line_error(cli("validate", "-s", "slow-thinking", tmp_path / "c.yaml"), *fragments)


def test_a_list_of_numbers_takes_numbers_only(tmp_path):
    (tmp_path / "g.yaml").write_text("teacher: {base_url: 'http://127.0.0.1:9/v1', model: oracle}\n"
                                     "problems: {n: 4, levels: [1, true]}\n")
    assert_one_line_error(cli("validate", "-s", "generate", tmp_path / "g.yaml"), "problems.levels", "true")


def test_numbers_as_yaml_writes_them_still_validate():
    from pai_distil.core.config import SlowThinkingConfig, validate
    import yaml

    data = yaml.safe_load("train: {learning_rate: 1e-5, max_steps: 30, warmup_steps: 3.0}\nstudent: {seed: 3}\n")
    assert data["train"]["learning_rate"] == "1e-5"  # YAML 1.1: an exponent without a dot is a string
    cfg = validate(SlowThinkingConfig, data, "c")
    assert (cfg.train.learning_rate, cfg.train.max_steps, cfg.student.seed) == (1e-5, 30, 3)


def test_a_key_with_no_auth_is_refused(tmp_path):
    ckpt = micro_checkpoint(tmp_path / "student")
    assert_one_line_error(cli("deploy", "local", ckpt, "--token", "abc", "--no-auth", "--port", "9"),
                          "--token and --no-auth")
    assert_one_line_error(cli("teacher", "serve", "--synthetic", "--api-key-env", "K", "--no-auth", "--port", "9",
                              env_extra={"K": "x"}), "--api-key-env and --no-auth")


@pytest.mark.parametrize("toml, fragments", [
    ('[pai]\noss_buckett = "b"\n', ["unknown key 'oss_buckett'", "did you mean oss_bucket?"]),
    ('[pia]\noss_bucket = "b"\n', ["[pia]", "did you mean [pai]?"]),
    ('oss_bucket = "b"\n', ["oss_bucket (outside any table)", "[pai]"]),
    ('oss_buckt = "b"\n', ["oss_buckt (outside any table)", "did you mean oss_bucket under [pai]?"]),
])
def test_config_toml_keys_that_no_setting_has_are_named(tmp_path, toml, fragments):
    (tmp_path / "config.toml").write_text(toml)
    assert_one_line_error(cli("config", "show", home=tmp_path), *fragments)


def test_config_set_names_the_nearest_key(tmp_path):
    assert_one_line_error(cli("config", "set", "oss_buckt=b", home=tmp_path), "did you mean oss_bucket?")


@pytest.mark.parametrize("flags, fragment", [
    (["-d"], "--detach is about a run that --dry-run does not start"),
    (["--force"], "--force is about a run that --dry-run does not start"),
    (["--download"], "--download applies to --backend pai only"),
    (["--max-restarts", "2", "-b", "local"], "--max-restarts applies to --backend pai only"),
])
def test_flags_a_dry_run_would_drop_are_refused(tmp_path, flags, fragment):
    (tmp_path / "g.yaml").write_text("teacher: {base_url: 'http://127.0.0.1:9/v1', model: oracle}\nproblems: {n: 2}\n")
    assert_one_line_error(cli("submit", "generate", "-c", tmp_path / "g.yaml", "--dry-run", *flags, home=tmp_path),
                          fragment)


def test_the_build_context_takes_only_tracked_files_in_a_checkout(tmp_path, monkeypatch):
    from pai_distil.cloud import images

    root = tmp_path / "repo"
    for rel in ("pai_distil/a.py", "jobs/b.py", "pai_distil/notes.txt", "jobs/sub/scratch.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    monkeypatch.setattr(images, "ROOT", root)
    everything = {"src/pai_distil/a.py", "src/jobs/b.py", "src/pai_distil/notes.txt", "src/jobs/sub/scratch.py"}
    assert set(images._source_files()) == everything  # not a checkout (an installed package): every file
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pai_distil/a.py", "jobs/b.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    assert set(images._source_files()) == {"src/pai_distil/a.py", "src/jobs/b.py"}
