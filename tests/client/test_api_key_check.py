"""`validate` checks the variables api_key_env fields name, where the job will read them."""

from __future__ import annotations

from click.testing import CliRunner

from pai_distil.cli import cli


def validate(tmp_path, *args, **env):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("teacher: {base_url: 'http://127.0.0.1:9/v1', api_key_env: H6_TEACHER_KEY}\nproblems: {n: 2}\n")
    env = {"H6_TEACHER_KEY": None, "PAI_DISTIL_TEACHER_API_KEY": None, **env}
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "validate", "-s", "generate", str(cfg), *args],
                              env=env)


def test_a_named_variable_unset_where_the_job_reads_it_is_refused_at_validate(tmp_path):
    r = validate(tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert ("teacher.api_key_env names H6_TEACHER_KEY, which is not set here, so the job would send no API key; "
            "export H6_TEACHER_KEY=<key>, or set teacher.api_key_env: null") in r.stderr
    assert validate(tmp_path, H6_TEACHER_KEY="k").exit_code == 0
    r = validate(tmp_path, "teacher.api_key_env=null")  # a server without a key
    assert r.exit_code == 0 and "api_key_env" not in r.stdout


def test_a_default_name_unset_is_a_note_and_pai_without_pass_secrets_a_warning(tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("teacher: {base_url: 'http://127.0.0.1:9/v1', api_key_env: PAI_DISTIL_TEACHER_API_KEY}\n"
                   "problems: {n: 2}\n")  # the default name, written out as the examples do
    r = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "validate", "-s", "generate", str(cfg)],
                           env={"PAI_DISTIL_TEACHER_API_KEY": None})
    assert r.exit_code == 0 and "PAI_DISTIL_TEACHER_API_KEY is not set here, so the job sends no API key" in r.stdout
    r = validate(tmp_path, "--backend", "pai")  # pass_secrets is off by default: the job is not handed it
    assert r.exit_code == 0, r.output
    assert "the job on pai is not handed $H6_TEACHER_KEY (pass_secrets is off)" in r.stdout
