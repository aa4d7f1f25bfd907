"""Jobs see only their contract, the secrets their config names and harmless variables.

Canary secrets are set in the client's environment; a `process` job that dumps its environment
and its supervisor's must find none of them, and none may reach the run's log, record or
artifact. The `local` and `pai` backends build their jobs' environments from the same rules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_process_backend import PRELUDE, start, wait_state

from pai_distil import paths
from pai_distil.backends.job_env import job_environment
from pai_distil.backends.local import docker_argv
from pai_distil.masking import masked
from pai_distil.run.registry import Registry
from pai_distil.core.config import JobSpec

CANARIES = {
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "canary-ak-secret-5b1e9d",
    "ALIBABA_CLOUD_SECURITY_TOKEN": "canary-sts-token-77c2aa",
    "OSS_ACCESS_KEY_SECRET": "canary-oss-secret-c0ffee",
    "DASHSCOPE_API_KEY": "canary-dashscope-3141",
    "PAI_DISTIL_EAS_TOKEN": "canary-eas-token-2718",
    "HF_TOKEN": "canary-hf-token-1618",
    "DATABASE_PASSWORD": "canary-db-pass-4242",
}
TEACHER_KEY = ("TEST_TEACHER_KEY", "teacher-key-handed-9a8b")  # named by the config: handed
CONFIG = {"teacher": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": TEACHER_KEY[0]}}

DUMPING_JOB = """
mine = dict(os.environ)
try:
    parent = open(f"/proc/{os.getppid()}/environ", "rb").read().decode(errors="replace")
except OSError:
    parent = ""
(out / "env.json").write_text(json.dumps({"mine": mine, "parent": parent}))
print("environment:", json.dumps(mine), parent)
write_manifest(out)
"""


@pytest.fixture
def canaries(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    for name, value in [*CANARIES.items(), TEACHER_KEY, ("LANG", "C.UTF-8"), ("HF_HUB_OFFLINE", "1")]:
        monkeypatch.setenv(name, value)
    return tmp_path / "home"


def spec_of(tmp_path: Path) -> JobSpec:
    return JobSpec(run_id="generate-1", stage="generate", command=[sys.executable, "-m", "pai_distil_jobs"],
                   config=CONFIG, output=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"))


def test_a_process_job_sees_no_secret_it_was_not_named(canaries):
    registry = Registry()
    record = start(registry, DUMPING_JOB, config=CONFIG)
    record = wait_state(registry, record.id)
    assert record.state == "succeeded", record.error
    seen = json.loads((Path(record.output) / "env.json").read_text())
    assert seen["mine"][TEACHER_KEY[0]] == TEACHER_KEY[1]
    assert seen["mine"]["LANG"] == "C.UTF-8" and seen["mine"]["HF_HUB_OFFLINE"] == "1"
    assert seen["mine"]["PAI_DISTIL_STAGE"] == "generate"
    assert not set(CANARIES) & set(seen["mine"])
    assert seen["parent"]  # the supervisor's environment was readable, and holds no canary either
    for f in [p for p in canaries.rglob("*") if p.is_file()]:  # log, run record, spec, artifact
        data = f.read_bytes()
        assert not [v for v in CANARIES.values() if v.encode() in data], f


def test_every_backend_builds_the_same_environment(canaries, tmp_path):
    env = job_environment(CONFIG, {"PAI_DISTIL_STAGE": "generate"})
    assert env[TEACHER_KEY[0]] == TEACHER_KEY[1] and env["HF_HUB_OFFLINE"] == "1"
    assert not set(CANARIES) & set(env)

    argv = docker_argv(spec_of(tmp_path), "image", 0, 29500, tmp_path / "config.json")
    handed = {a.split("=", 1)[0] for a, flag in zip(argv[1:], argv) if flag == "-e"}
    assert TEACHER_KEY[0] in handed and not set(CANARIES) & handed
    assert not [v for v in [*CANARIES.values(), TEACHER_KEY[1]] if any(v in a for a in argv)]  # names, no values

    from pai_distil.backends.pai import Plan
    from pai_distil.cloud.pai.config import PaiConfig

    plan = Plan(spec_of(tmp_path), PaiConfig(oss_bucket="b", ecs_spec="ecs.g6.xlarge", pass_secrets=True))
    assert plan.env[TEACHER_KEY[0]] == TEACHER_KEY[1] and not set(CANARIES) & set(plan.env)


def test_dry_run_masks_by_field_and_only_long_values(canaries, tmp_path, monkeypatch):
    from pai_distil.backends.pai import dry_run_body
    from pai_distil.cloud.pai import config

    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "x")  # a short id must not mangle the body
    config.save({"oss_bucket": "b", "ecs_spec": "ecs.g6.xlarge", "pass_secrets": "true", "image": "img:x"})
    body = dry_run_body(spec_of(tmp_path), no_preflight=True)  # the masking alone: no ListEcsSpecs call to a cloud
    assert body["JobType"] == "PyTorchJob" and body["JobSpecs"][0]["Image"] == "img:x"
    assert body["Envs"][TEACHER_KEY[0]] == "***"
    assert TEACHER_KEY[1] not in json.dumps(body)


def test_masked_replaces_fields_env_entries_and_long_values_only():
    data = {"Envs": {"KEY": "x", "OTHER": "x marks"}, "env": [{"name": "KEY", "value": "x"}],
            "note": "token abcdefgh01 in text", "short": "x"}
    assert masked(data, names=["KEY"], values=["x", "abcdefgh01"]) == {
        "Envs": {"KEY": "***", "OTHER": "x marks"}, "env": [{"name": "KEY", "value": "***"}],
        "note": "token *** in text", "short": "x"}
