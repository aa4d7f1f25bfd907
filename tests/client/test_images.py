"""Job images, DeepSpeed configs and the local backend's container command, without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pai_distil.cloud import images
from pai_distil.core import dockercli
from pai_distil.backends import get_backend
from pai_distil.backends import local
from pai_distil.cli import cli
from pai_distil_jobs.train.deepspeed_config import zero_config
from pai_distil.core.errors import UserError
from pai_distil.core.config import JobSpec, Training

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the files that go into an image, so a test can change them."""
    for name in ("images", "pai_distil", "jobs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setattr(images, "ROOT", tmp_path)
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path / "images")
    monkeypatch.setattr(dockercli, "image_id", lambda ref: None)  # no engine needed
    return tmp_path


def test_tag_is_a_content_hash_of_what_goes_into_the_image(tree):
    first = images.plan("cpu").tag
    assert re.fullmatch(r"pai-distil-cpu:[0-9a-f]{16}", first)
    assert images.plan("cpu").tag == first  # stable
    (tree / "README.md").write_text("docs change")  # not in the image
    assert images.plan("cpu").tag == first
    with open(tree / "jobs" / "train" / "trainer.py", "a") as f:
        f.write("# changed\n")
    second = images.plan("cpu").tag
    assert second != first
    with open(tree / "images" / "Dockerfile.cpu", "a") as f:
        f.write("# changed\n")
    assert images.plan("cpu").tag != second
    assert images.plan("cpu", base="debian:other").tag != images.plan("cpu").tag


def test_cpu_plan_with_wheelhouse_builds_offline(tree, tmp_path):
    wh = tmp_path / "wh"
    wh.mkdir()
    with pytest.raises(UserError, match="lacks .*accelerate==.* refill it"):
        images.plan("cpu", wheelhouse_dir=wh)
    for pin in images.requirements(images.TARGETS["cpu"]):
        name, version = pin.split("==")
        (wh / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    p = images.plan("cpu", wheelhouse_dir=wh)
    assert p.network == "none" and "--no-index" in p.build_args["PIP_OPTS"]
    assert p.build_args["BASE"] == images.BASE_TAG
    assert any(k.startswith("wheels/torch-2.13.0") for k in p.files)
    online = images.plan("cpu")
    assert online.network == "host" and "--no-index" not in online.build_args["PIP_OPTS"]
    assert p.tag == online.tag  # where the wheels come from is not part of the image's identity


def test_gpu_build_context_and_args(tree, tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    p = images.plan("gpu", pip_cert=cert)
    assert p.tag.startswith("pai-distil-gpu:") and p.target.dockerfile == "Dockerfile.gpu"
    assert p.build_args["BASE"] == images.PAI_PYTORCH and "pai/" in p.base
    reqs = p.files["requirements.txt"].decode().split()
    # the image's own CUDA torch, resolved with every other pin; transformers with the extra that states its torch
    assert "torch==2.13.0" in reqs and "transformers[torch]==5.24.0" in reqs and images.VLLM in reqs
    assert any(r.startswith("deepspeed==") for r in reqs) and any(r.startswith("nvidia-nccl") for r in reqs)
    assert p.files["pip-cert.pem"] == cert
    ctx = tmp_path / "ctx"
    images.write_context(p, ctx)
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "ARG BASE=" in dockerfile and "FROM ${BASE}" in dockerfile and "--no-build-isolation" in dockerfile
    # resolved, checked and smoke-tested: the lock is never installed --no-deps
    assert "-r /build/first.txt" in dockerfile and "--no-deps $PIP_OPTS -r" not in dockerfile
    assert "pip check" in dockerfile and "python -m pai_distil_jobs.smoke" in dockerfile
    assert (ctx / "src" / "jobs" / "__main__.py").is_file() and (ctx / "src" / "pai_distil" / "core" / "stages.py").is_file()
    assert images.plan("gpu", base="my.registry/pai/pytorch:x").build_args["BASE"] == "my.registry/pai/pytorch:x"
    with pytest.raises(UserError, match="--pip-cert"):
        images.plan("gpu", pip_cert=tmp_path / "missing.pem")


def test_cli_dry_run_prints_the_plan_and_the_resolved_versions(tree):
    import json

    result = CliRunner().invoke(cli, ["images", "build", "--target", "gpu", "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["tag"].startswith("pai-distil-gpu:") and plan["dockerfile"] == "Dockerfile.gpu"
    assert plan["versions"] == {**images.resolved_versions(images.TARGETS["cpu"]), "vllm": "0.30.0"}
    assert plan["versions"]["transformers"] == "5.24.0" and plan["versions"]["torch"] == "2.13.0"
    # the CUDA runtime torch was built with, and the lowest driver that runs it (pre-flight asks DLC for one)
    assert plan["cuda"] == "13.0" and plan["driver_floor"] == "580.65.06"


def test_pre_flight_assumes_the_cuda_the_gpu_lock_installs():
    from pai_distil.cloud.pai.preflight import DEFAULT_IMAGE_CUDA

    assert images.image_cuda(images.TARGETS["gpu"]) == DEFAULT_IMAGE_CUDA
    assert images.image_cuda(images.TARGETS["cpu"]) is None


def test_gpu_lock_holds_the_training_stack_of_the_cpu_lock_and_fits_vllm():
    """What CI trains with is what trains on GPUs; and the lock is one pip resolution, so vLLM's own
    pins (an exact torch, a transformers range) held when it was made."""
    cpu, gpu = (images.resolved_versions(images.TARGETS[t]) for t in ("cpu", "gpu"))
    assert {k: gpu[k] for k in images.TRAINING_STACK} == {k: cpu[k] for k in images.TRAINING_STACK}
    assert "+" not in gpu["torch"]  # PyPI's CUDA build, not the CPU wheelhouse's
    header = (ROOT / "images" / "requirements-gpu.txt").read_text().splitlines()[:4]
    assert any("images lock --target gpu" in line for line in header)


def test_a_failed_build_names_the_pins_that_do_not_fit():
    output = """ERROR: Cannot install -r /build/first.txt (line 70) and torch==2.3.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested torch==2.3.0
    accelerate 1.15.0 depends on torch>=2.0.0
    transformers[torch] 5.24.0 depends on torch>=2.6; extra == "torch"

To fix this you could try to:
1. loosen the range of package versions you've specified
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
The command '/bin/sh -c set -eu; ...' returned a non-zero code: 1"""
    assert images.build_failure(output) == ("pins that do not fit together: transformers[torch] 5.24.0 depends on "
                                            "torch>=2.6, but the lock pins torch==2.3.0")
    smoke = "Step 14/16 : RUN ...\npai-distil smoke check failed: transformers 5.24.0 finds torch 2.3.0 unusable\nThe command"
    assert images.build_failure(smoke).startswith("pai-distil smoke check failed: transformers 5.24.0")


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_run_jobs_as_a_non_root_user_and_bake_no_secret(name):
    text = (ROOT / "images" / name).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"(API_KEY|SECRET|TOKEN|PASSWORD)", text, re.I)
    assert "pai_distil_jobs" in text


def test_lock_pins_every_requirement_of_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["train"]
    pins = {images._name(p): p.split("==")[1] for p in images.requirements(images.TARGETS["cpu"])}
    for req in wanted:
        name = images._name(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
        assert name in pins, f"{name} is missing from images/requirements.txt: run `pai-distil images lock`"
    assert pins["torch"] == "2.13.0" and "deepspeed" in pins and "setuptools" in pins


def test_zero_configs_follow_the_training_settings():
    train = Training(batch_size=32, deepspeed={"stage": 2})
    cfg = zero_config(train, world_size=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 16 and cfg["train_batch_size"] == 32
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"] == {"enabled": "auto"} and "offload_optimizer" not in cfg["zero_optimization"]
    z3 = zero_config(Training(batch_size=8, deepspeed={"stage": 3, "bf16": True, "offload_optimizer": True,
                                                       "offload_param": True}), world_size=8)
    assert z3["zero_optimization"]["stage"] == 3 and z3["bf16"]["enabled"]
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert z3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert z3["train_micro_batch_size_per_gpu"] == 1 and z3["train_batch_size"] == 8
    with pytest.raises(Exception, match="offload_param needs stage: 3"):
        Training(deepspeed={"stage": 2, "offload_param": True})
    assert Training().deepspeed is None


# -- the local backend's container command ------------------------------------------------------


def _spec(tmp_path, config: dict, nodes: int = 1) -> JobSpec:
    cots = tmp_path / "cots.jsonl"
    cots.write_text("{}\n")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return JobSpec(run_id="r1", stage="generate", command=["python", "-m", "pai_distil_jobs"],
                   config=config, inputs={"cots": str(cots), "problems": str(data)},
                   output=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"), nodes=nodes)


def test_container_command_mounts_and_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "s3cret-value")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ak-secret-value")
    spec = _spec(tmp_path, {"teacher": {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "MY_TEACHER_KEY"}})
    argv = local.docker_argv(spec, "img:1", rank=0, master_port=1234, config_path=tmp_path / "config.json")
    joined = " ".join(argv)
    assert "s3cret-value" not in joined and "ak-secret-value" not in joined
    assert ["-e", "MY_TEACHER_KEY"] == argv[argv.index("MY_TEACHER_KEY") - 1: argv.index("MY_TEACHER_KEY") + 1]
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" not in argv  # a job gets only the secrets its config names
    assert f"type=bind,source={tmp_path / 'cots.jsonl'},target=/pai/inputs/cots/cots.jsonl,readonly" in argv
    assert f"type=bind,source={tmp_path / 'data'},target=/pai/inputs/problems,readonly" in argv
    assert f"type=bind,source={tmp_path / 'out'},target=/pai/output" in argv
    assert "PAI_DISTIL_INPUT_COTS=/pai/inputs/cots/cots.jsonl" in argv and "PAI_DISTIL_OUTPUT=/pai/output" in argv
    assert argv[argv.index("--network") + 1] == "host"  # the teacher is on the host's loopback
    assert argv[-4:] == ["img:1", "python", "-m", "pai_distil_jobs"]
    assert "--rm" in argv and "pai-distil.run=r1" in argv
    if os.geteuid() != 0:
        assert argv[argv.index("--user") + 1] == f"{os.geteuid()}:{os.getegid()}"
    else:
        assert "--user" not in argv  # root's jobs run as the image's non-root user


def test_network_none_for_one_node_without_endpoints(tmp_path):
    spec = _spec(tmp_path, {"student": {"model": "preset:micro"}})
    argv = local.docker_argv(spec, "img", 0, 1, tmp_path / "c.json")
    assert argv[argv.index("--network") + 1] == "none"
    two = local.docker_argv(_spec(tmp_path, {}, nodes=2), "img", 1, 4321, tmp_path / "c.json")
    assert two[two.index("--network") + 1] == "host"
    assert "RANK=1" in two and "WORLD_SIZE=2" in two and "MASTER_ADDR=127.0.0.1" in two and "MASTER_PORT=4321" in two


def _fake_docker(tmp_path, monkeypatch, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_engine_stopped_is_one_clear_error(tmp_path, monkeypatch):
    _fake_docker(tmp_path, monkeypatch, "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                                        "Is the docker daemon running?' >&2; exit 1\n")
    with pytest.raises(UserError) as err:
        dockercli.require_engine()
    msg = err.value.message
    assert "Is the docker daemon running?" in msg and "dockerd" in msg and "--backend process" in msg
    assert "\n" not in msg


def test_docker_missing_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="install Docker.*--backend process"):
        dockercli.require_engine()


def test_local_start_without_engine_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_DISTIL_HOME", str(tmp_path / "home"))
    _fake_docker(tmp_path, monkeypatch, "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    from pai_distil.run.registry import Registry

    registry = Registry()
    spec = _spec(tmp_path, {})
    record = registry.create(spec.run_id, spec.stage, "local", "k", str(tmp_path), spec.output, None)
    with pytest.raises(UserError, match="--backend process"):
        get_backend("local", registry).start(spec, record)
    assert registry.get("r1").state == "failed" and "Docker" in registry.get("r1").error


def test_cli_submit_local_without_engine_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_DISTIL_HOME", str(tmp_path / "home"))
    _fake_docker(tmp_path, monkeypatch, "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    cots = tmp_path / "cots.jsonl"
    cots.write_text('{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n')
    result = CliRunner().invoke(cli, ["submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "local"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: the Docker engine is not reachable") and "--backend process" in lines[-1]


def test_serving_images_are_thin_layers_tagged_by_content(tree, tmp_path):
    cpu = images.plan("cpu")
    serve = images.plan("serve-cpu")
    assert serve.base == cpu.tag and serve.build_args == {"BASE": cpu.tag} and set(serve.files) == {"Dockerfile"}
    assert re.fullmatch(r"pai-distil-serve-cpu:[0-9a-f]{16}", serve.tag)
    with open(tree / "jobs" / "serve.py", "a") as f:  # the server's code is in the CPU image: both change
        f.write("# changed\n")
    assert images.plan("serve-cpu").base != cpu.tag and images.plan("serve-cpu").tag != serve.tag
    gpu = images.plan("serve-gpu", base="my.registry/sglang:latest")
    assert gpu.build_args == {"BASE": "my.registry/sglang:latest"} and "serve-entrypoint.sh" in gpu.files
    assert images.plan("serve-gpu").base == images.VLLM_BASE
    ctx = tmp_path / "ctx"
    images.write_context(gpu, ctx)
    script = (ctx / "serve-entrypoint.sh").read_text()
    assert "--reasoning-parser" in script and "vllm serve" in script and "sglang.launch_server" in script
    with pytest.raises(UserError, match="needs no wheelhouse"):
        images.wheelhouse(tmp_path / "wh", "serve-gpu")


@pytest.mark.parametrize("name", ["Dockerfile.serve-cpu", "Dockerfile.serve-gpu"])
def test_serving_images_bake_no_token(name):
    text = (ROOT / "images" / name).read_text()
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|SECRET|API_KEY)", text, re.I | re.M)
    assert "EXPOSE 8000" in text
