"""`pai-distil deploy eas` against the emulated PAI-EAS: the real SDK, real servers, the official openai client."""

from __future__ import annotations

import json
import re
import threading

import openai
import pytest

from conftest import ROOT
from pai_distil.cloud.deploy import eas_schema
from serving import AK, cli, cloud_env, micro_checkpoint, micro_reward_checkpoint, start_emulator

PROMPT = "Start with 4. Add 3, then multiply by 2. Work modulo 10. What is the result?"
TOKEN = "eas-token-not-a-secret-0123"
RESOURCES = ("--instance-type", "ecs.gn7i-c8g1.2xlarge")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [micro_checkpoint(root / f"student-v{i}", seed=i) for i in (0, 1)]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    import oss2

    with start_emulator(tmp_path_factory.mktemp("emulator")) as url:
        oss2.Bucket(oss2.Auth(AK, cloud_env(url)["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]), url, "models").create_bucket()
        yield url


def greedy(ckpt, prompt: str = PROMPT, max_tokens: int = 16, thinking: bool | None = None) -> str:
    from pai_distil.core.protocol import split_reasoning
    from pai_distil_jobs.models.generation import generate
    from pai_distil_jobs.models.models import load_model

    model, tok = load_model(str(ckpt))
    return split_reasoning(generate(model, tok, [prompt], max_tokens, enable_thinking=thinking)[0]["text"])[1]


def deploy(ckpt, name: str, url: str, *extra: str):
    proc = cli("deploy", "eas", str(ckpt), "--name", name, "--oss-prefix", f"oss://models/{name}/{ckpt.name}/",
               *RESOURCES, "--timeout", "300", *extra, env=cloud_env(url, PAI_DISTIL_EAS_TOKEN=TOKEN))
    assert proc.returncode == 0, proc.stderr
    return proc


def endpoint_of(proc) -> str:
    return re.search(r"Running at (\S+/v1)", proc.stdout).group(1)


# -- the generated config --------------------------------------------------------------------------


def dry_run(ckpt, *extra: str, token: str = TOKEN) -> dict:
    proc = cli("deploy", "eas", str(ckpt), "--oss-prefix", "oss://models/students/slow-thinking/", *extra,
               "--dry-run", env=cloud_env("http://127.0.0.1:9", PAI_DISTIL_EAS_TOKEN=token))
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout
    return json.loads(proc.stdout)


def bf16_copy(ckpt, dest):
    """The checkpoint as a GPU run saves it: weights and config in bfloat16, the manifest written last."""
    import shutil

    from pai_distil.core.artifacts import write_manifest
    from pai_distil_jobs.models.precision import cast_checkpoint

    shutil.copytree(ckpt, dest)
    cast_checkpoint(dest, "bfloat16")
    write_manifest(dest)
    return dest


def test_vllm_config_has_the_fields_of_eas_service_config_format(ckpts):
    config = dry_run(ckpts[0], "--name", "distilled_student", *RESOURCES, "--autoscale", "1:4", "--instances", "2")
    assert eas_schema.problems(config) == []
    meta, (container,), (storage, shm) = config["metadata"], config["containers"], config["storage"]
    assert meta == {"name": "distilled_student", "instance": 2, "token": "****", "rpc": {"keepalive": 600000}}
    assert config["cloud"]["computing"]["instances"] == [{"type": "ecs.gn7i-c8g1.2xlarge"}]
    assert container["image"].endswith("/pai-eas/vllm:0.11.2-mows0.5.1") and container["port"] == 8000
    script = container["script"].split()
    assert script[:3] == ["vllm", "serve", storage["mount_path"]]
    assert script[script.index("--reasoning-parser") + 1] == "qwen3"
    assert script[script.index("--served-model-name") + 1] == "distilled_student"
    # a micro preset trained on CPU is fp32, and is served so; an ECS type's name says no GPU count
    assert script[script.index("--dtype") + 1] == "float32" and script[script.index("--tensor-parallel-size") + 1] == "1"
    # a local checkpoint goes to a folder named for its content under the prefix
    assert re.fullmatch(r"oss://models/students/slow-thinking/[0-9a-f]{16}/", storage["oss"]["path"])
    assert storage["oss"]["readOnly"] is True
    assert shm == {"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 16}}
    for probe in ("startup_check", "readiness_check"):
        assert container[probe]["http_get"] == {"path": "/health", "port": 8000}
    # reasoning streams last minutes: QPS stays below 1, so the autoscaler keys on requests in flight
    assert config["autoscaler"] == {"min": 1, "max": 4,
                                    "scaleStrategies": [{"metricName": "concurrency", "threshold": 32}]}


def test_autoscaler_on_qps_when_asked_and_workspace_from_config(ckpts, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[pai]\nworkspace_id = "ws-team-1"\n')
    proc = cli("deploy", "eas", str(ckpts[0]), "--oss-prefix", "oss://models/students/x/", *RESOURCES,
               "--autoscale", "2:6", "--autoscale-qps", "4", "--dry-run",
               env=cloud_env("http://127.0.0.1:9", PAI_DISTIL_EAS_TOKEN=TOKEN, PAI_DISTIL_HOME=str(home)))
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert config["autoscaler"]["scaleStrategies"] == [{"metricName": "qps", "threshold": 4.0}]
    assert config["metadata"]["workspace_id"] == "ws-team-1"


def test_docs_show_the_generated_vllm_config(ckpts, tmp_path):
    page = (ROOT / "docs/deploy.md").read_text()
    block = re.search(r"<!-- eas-vllm-json -->\n```json\n(.*?)```", page, re.S)
    assert block, "docs/deploy.md lacks the generated EAS JSON block"
    shown = json.loads(block.group(1))
    student = bf16_copy(ckpts[0], tmp_path / "student")  # as a GPU run saves it
    generated = dry_run(student, "--name", "distilled_student", *RESOURCES, "--autoscale", "1:4")
    digest = re.compile(r"/[0-9a-f]{16}/")  # the content folder: the page's checkpoint is not this one
    assert digest.sub("/D/", json.dumps(shown, sort_keys=True)) == digest.sub("/D/", json.dumps(generated, sort_keys=True))


def test_sglang_resource_group_template_override_and_set(ckpts, tmp_path):
    config = dry_run(ckpts[0], "--engine", "sglang", "--resource-group", "eas-r-abc", "--cpu", "8",
                     "--memory", "32000", "--gpu", "1", "--set", "metadata.rpc.keepalive=600000")
    assert eas_schema.problems(config) == []
    assert config["containers"][0]["script"].startswith("python3 -m sglang.launch_server --model-path /mnt/model")
    assert config["metadata"]["resource"] == "eas-r-abc" and config["metadata"]["gpu"] == 1
    assert config["metadata"]["rpc"] == {"keepalive": 600000} and "cloud" not in config
    template = json.loads((ROOT / "templates" / "eas-vllm.json").read_text())
    template["containers"][0]["env"] = [{"name": "VLLM_USE_V1", "value": "1"}]
    (tmp_path / "mine.json").write_text(json.dumps(template))
    mine = dry_run(ckpts[0], *RESOURCES, "--template", str(tmp_path / "mine.json"))
    assert mine["containers"][0]["env"] == [{"name": "VLLM_USE_V1", "value": "1"}]


def test_production_settings_follow_the_checkpoint_and_the_instance(ckpts, tmp_path):
    ckpt = bf16_copy(ckpts[0], tmp_path / "student-bf16")
    proc = cli("deploy", "eas", str(ckpt), "--oss-prefix", "oss://models/s/", "--instance-type",
               "ml.gu8xf.c96m1600.8-gu108", "--rolling", "2/25%", "--keepalive", "1800", "--shm-size", "64",
               "--dry-run", env=cloud_env("http://127.0.0.1:9", PAI_DISTIL_EAS_TOKEN=TOKEN))
    assert proc.returncode == 0, proc.stderr
    assert "--dtype bfloat16 (the checkpoint's)" in proc.stderr and "--tensor-parallel 8 (GPUs per instance)" in proc.stderr
    config = json.loads(proc.stdout)
    assert eas_schema.problems(config) == []
    script = config["containers"][0]["script"].split()
    assert script[script.index("--dtype") + 1] == "bfloat16" and script[script.index("--tensor-parallel-size") + 1] == "8"
    assert config["metadata"]["rpc"] == {"keepalive": 1800000}
    assert config["metadata"]["rolling_strategy"] == {"max_surge": 2, "max_unavailable": "25%"}
    assert config["storage"][1]["empty_dir"] == {"medium": "memory", "size_limit": 64}
    # an ECS type with --gpu, and SGLang's flag for the same thing
    sglang = dry_run(ckpt, "--engine", "sglang", "--instance-type", "ecs.gn7i-c32g1.32xlarge", "--gpu", "4")
    args = sglang["containers"][0]["script"].split()
    assert args[args.index("--tp-size") + 1] == "4" and args[args.index("--dtype") + 1] == "bfloat16"
    assert "gpu" not in sglang["metadata"]  # the instance type brings its GPUs; metadata.gpu is a resource group's


@pytest.mark.parametrize("config, field", [
    ({"metadata": {"name": "x", "instance": 1}, "containers": [{"image": "i", "port": 80, "script": "s"}]}, "resources"),
    ({"metadata": {"name": "Bad-Name", "instance": 1, "resource": "r", "cpu": 1, "memory": 1},
      "containers": [{"image": "i", "port": 80, "script": "s"}]}, "metadata.name"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1},
      "containers": [{"image": "i", "port": 80, "script": "s", "readiness_check": {
          "http_get": {"path": "/h", "port": 80}, "tcp_socket": {"port": 80}}}]}, "readiness_check"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1},
      "containers": [{"image": "i", "port": 80, "script": "s"}],
      "storage": [{"mount_path": "/m", "oss": {"path": "s3://b/k"}}]}, "storage.0.oss.path"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1},
      "containers": [{"image": "i", "port": 80, "script": "s"}],
      "autoscaler": {"min": 3, "max": 2, "scaleStrategies": [{"metricName": "qps", "threshold": 1}]}}, "autoscaler"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1,
                   "rolling_strategy": {"max_surge": "lots", "max_unavailable": 1}},
      "containers": [{"image": "i", "port": 80, "script": "s"}]}, "rolling_strategy"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1, "rpc": {"keepalive": 0}},
      "containers": [{"image": "i", "port": 80, "script": "s"}]}, "rpc.keepalive"),
    ({"metadata": {"name": "x", "instance": 1, "resource": "r", "cpu": 1, "memory": 1},
      "containers": [{"image": "i", "port": 80, "script": "s"}],
      "storage": [{"mount_path": "/dev/shm", "empty_dir": {"medium": "disk", "size_limit": 8}}]}, "empty_dir.medium"),
])
def test_schema_rejects_configs_eas_would_reject(config, field):
    found = eas_schema.problems(config)
    assert found and any(field in p for p in found), found


@pytest.mark.parametrize("args, fragment", [
    (("--autoscale", "4:1"), "--autoscale"),
    (("--name", "Has-Dash"), "service name"),
    ((), "--instance-type"),
    (("--resource-group", "eas-r-1"), "--cpu and --memory"),
    (("--instance-type", "ml.gu7i.c16m60.1-gu30", "--tensor-parallel", "2"), "more than the 1 GPUs"),
    ((*RESOURCES, "--rolling", "0/0"), "--rolling '0/0'"),
    ((*RESOURCES, "--rolling", "1"), "MAX_SURGE/MAX_UNAVAILABLE"),
])
def test_bad_deploy_options_are_one_line(ckpts, args, fragment):
    proc = cli("deploy", "eas", str(ckpts[0]), "--oss-prefix", "oss://models/s/", *args, "--dry-run",
               env=cloud_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and fragment in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_local_checkpoint_needs_an_oss_prefix(ckpts):
    proc = cli("deploy", "eas", str(ckpts[0]), *RESOURCES, "--dry-run", env=cloud_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and "--oss-prefix" in proc.stderr


# -- the emulated service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(emulator, ckpts):
    proc = deploy(ckpts[0], "student", emulator)
    assert TOKEN not in proc.stdout + proc.stderr and "created EAS service student" in proc.stderr
    return endpoint_of(proc)


def ask(base_url: str, key: str = TOKEN, **kw):
    c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    return c.chat.completions.create(model="student", messages=[{"role": "user", "content": PROMPT}],
                                     max_tokens=16, temperature=0, **kw)


@pytest.mark.parametrize("thinking", [None, True, False])
def test_emulated_eas_answers_the_openai_client_with_and_without_thinking(service, ckpts, thinking):
    extra = {} if thinking is None else {"extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    r = ask(service, **extra)
    assert r.choices[0].message.content == greedy(ckpts[0], thinking=thinking)
    assert r.model == "student" and r.usage.completion_tokens <= 16
    chunks = list(ask(service, stream=True, **extra))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content


@pytest.mark.parametrize("key", ["", "wrong-token"])
def test_gateway_refuses_missing_or_wrong_token_and_keeps_serving(service, key):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.post(service + "/chat/completions", headers=headers, json={"model": "student", "messages": []})
    assert resp.status_code == 401
    with pytest.raises(openai.BadRequestError, match="'messages' is required"):
        openai.OpenAI(base_url=service, api_key=TOKEN, max_retries=0).chat.completions.create(model="student", messages=[])
    assert ask(service).choices[0].message.content is not None


def test_list_describe_and_signature(emulator, service):
    env = cloud_env(emulator)
    listed = cli("deploy", "list", env=env)
    assert listed.returncode == 0 and re.search(r"student\s+Running\s+1/1", listed.stdout), listed.stdout
    described = cli("deploy", "describe", "student", "--json", env=env)
    svc = json.loads(described.stdout)
    assert svc["Status"] == "Running" and svc["InternetEndpoint"] + "/v1" == service
    assert TOKEN not in described.stdout and svc["AccessToken"].count("*") == 4
    bad = cli("deploy", "list", env={**env, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "wrong-secret"})
    assert bad.returncode == 2 and "SignatureDoesNotMatch" in bad.stderr and bad.stderr.count("\n") == 1
    missing = cli("deploy", "describe", "nope", env=env)
    assert missing.returncode == 2 and "no EAS service 'nope'" in missing.stderr


def test_eas_endpoint_can_come_from_pai_distil_config(emulator, service, tmp_path):
    env = {k: v for k, v in cloud_env(emulator).items() if k != "PAI_DISTIL_EAS_ENDPOINT"}
    env["PAI_DISTIL_HOME"] = str(tmp_path / "home")
    assert cli("config", "set", f"eas_endpoint={emulator}", env=env).returncode == 0
    listed = cli("deploy", "list", env=env)
    assert listed.returncode == 0 and re.search(r"student\s+Running", listed.stdout), listed.stderr


def test_rolling_update_fails_no_request_and_switches_to_the_new_checkpoint(emulator, ckpts):
    from pai_distil_jobs.serve.server import fingerprint

    old, new = fingerprint(ckpts[0]), fingerprint(ckpts[1])
    base = endpoint_of(deploy(ckpts[0], "rolling", emulator))
    c = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0)
    seen, errors, stop = [], [], threading.Event()

    def loop():
        for i in range(400):  # bounded; stops earlier once the new version has answered a few times
            if stop.is_set():
                return
            try:
                if i % 2:
                    chunks = list(c.chat.completions.create(
                        model="rolling", messages=[{"role": "user", "content": PROMPT}], max_tokens=8,
                        temperature=0, stream=True))
                    seen.append((chunks[-1].system_fingerprint,
                                 "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)))
                else:
                    r = c.chat.completions.create(model="rolling", messages=[{"role": "user", "content": PROMPT}],
                                                  max_tokens=8, temperature=0)
                    seen.append((r.system_fingerprint, r.choices[0].message.content))
            except Exception as e:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(repr(e))
            if sum(fp == new for fp, _ in seen) >= 6:
                return

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        proc = deploy(ckpts[1], "rolling", emulator)
        assert "updated EAS service rolling" in proc.stderr and endpoint_of(proc) == base
    finally:
        thread.join(300)
        stop.set()
    assert errors == []
    fps = [fp for fp, _ in seen]
    switch = fps.index(new)
    assert switch > 0 and set(fps[:switch]) == {old} and set(fps[switch:]) == {new}, fps
    assert {text for fp, text in seen if fp == new} == {greedy(ckpts[1], max_tokens=8)}
    assert cli("deploy", "delete", "rolling", "--yes", env=cloud_env(emulator)).returncode == 0


def test_failed_update_is_reported_and_the_old_version_keeps_serving(emulator, service, ckpts, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpts[0], broken)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] *= 2  # the client's header checks pass; the weights do not fit the model it builds
    (broken / "config.json").write_text(json.dumps(config))
    proc = cli("deploy", "eas", str(broken), "--name", "student", "--oss-prefix", "oss://models/student/broken/",
               *RESOURCES, "--timeout", "300", env=cloud_env(emulator, PAI_DISTIL_EAS_TOKEN=TOKEN))
    assert proc.returncode == 2 and "is Failed: version 2 did not start" in proc.stderr, proc.stderr
    assert "previous version keeps serving" in proc.stderr
    assert ask(service).choices[0].message.content == greedy(ckpts[0])


def test_two_updates_write_two_oss_paths_with_production_settings(emulator, ckpts, tmp_path):
    """An update goes to a new folder under the same --oss-prefix: nothing the running version reads is
    rewritten. Both service configs serve bf16 with tensor parallelism, /dev/shm, keepalive and a rolling strategy."""
    import oss2

    env = cloud_env(emulator, PAI_DISTIL_EAS_TOKEN=TOKEN)
    bucket = oss2.Bucket(oss2.Auth(AK, env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]), emulator, "models")

    def deploy_and_describe(ckpt) -> dict:
        proc = cli("deploy", "eas", str(ckpt), "--name", "versioned", "--oss-prefix", "oss://models/versioned/",
                   "--instance-type", "ml.gu7i.c16m60.1-gu30", "--rolling", "1/0", "--timeout", "300", env=env)
        assert proc.returncode == 0, proc.stderr
        described = cli("deploy", "describe", "versioned", "--json", env=env)
        return json.loads(json.loads(described.stdout)["ServiceConfig"])

    def objects() -> dict:
        return {o.key: o.etag for o in oss2.ObjectIterator(bucket, prefix="versioned/")}

    one = deploy_and_describe(bf16_copy(ckpts[0], tmp_path / "v0"))
    before = objects()
    two = deploy_and_describe(bf16_copy(ckpts[1], tmp_path / "v1"))
    after = objects()
    paths = [c["storage"][0]["oss"]["path"] for c in (one, two)]
    assert paths[0] != paths[1] and all(p.startswith("oss://models/versioned/") for p in paths), paths
    assert {k: after[k] for k in before} == before  # the first version's files are untouched
    assert {k.rsplit("/", 1)[0] for k in set(after) - set(before)} == {paths[1][len("oss://models/"):].rstrip("/")}
    for config in (one, two):
        assert eas_schema.problems(config) == []
        script = config["containers"][0]["script"].split()
        assert script[script.index("--dtype") + 1] == "bfloat16"
        assert script[script.index("--tensor-parallel-size") + 1] == "1"  # ml.gu7i.c16m60.1-gu30: one GPU
        assert {"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 16}} in config["storage"]
        assert config["metadata"]["rpc"]["keepalive"] == 600000
        assert config["metadata"]["rolling_strategy"] == {"max_surge": 1, "max_unavailable": 0}
    assert cli("deploy", "delete", "versioned", "--yes", env=env).returncode == 0


# -- a reward model as its own service ------------------------------------------------------------------

JOB_IMAGE = "registry.example.com/team/pai-distil-gpu:0123456789abcdef"
ITEM = {"prompt": PROMPT, "completion": "<think>4+3=7, 7*2=14, 14 mod 10 = 4</think> The answer is 4."}


@pytest.fixture(scope="module")
def reward_ckpt(tmp_path_factory):
    return micro_reward_checkpoint(tmp_path_factory.mktemp("rm") / "reward-model")


def test_reward_model_config_runs_the_reward_server_of_the_job_image(reward_ckpt):
    config = dry_run(reward_ckpt, "--name", "distilled_rm", *RESOURCES, "--image", JOB_IMAGE)
    assert eas_schema.problems(config) == []
    (container,), (storage, _shm) = config["containers"], config["storage"]
    assert container["image"] == JOB_IMAGE and container["port"] == 8000
    assert container["script"].split() == ["python3", "-m", "pai_distil", "reward", "serve", storage["mount_path"],
                                           "--host", "0.0.0.0", "--port", "8000"]
    # the server checks the service token too; like metadata.token, it is masked in what is printed
    assert container["env"] == [{"name": "PAI_DISTIL_REWARD_API_KEY", "value": "****"}]
    assert config["metadata"]["token"] == "****"
    assert container["readiness_check"]["http_get"] == {"path": "/health", "port": 8000}


@pytest.mark.parametrize("args, fragment", [
    (("--engine", "vllm", "--image", JOB_IMAGE), "is a reward model (reward_head.safetensors), which vllm cannot"),
    (("--engine", "reward",), "pass --image REGISTRY/pai-distil-gpu:TAG"),
    (("--served-model-name", "rm", "--image", JOB_IMAGE), "--served-model-name"),
])
def test_bad_reward_deploy_options_are_one_line(reward_ckpt, tmp_path, args, fragment):
    proc = cli("deploy", "eas", str(reward_ckpt), "--oss-prefix", "oss://models/rm/", *RESOURCES, *args, "--dry-run",
               env=cloud_env("http://127.0.0.1:9", PAI_DISTIL_HOME=str(tmp_path)))
    assert proc.returncode == 2 and fragment in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_engine_reward_of_a_student_is_one_line(ckpts):
    proc = cli("deploy", "eas", str(ckpts[0]), "--engine", "reward", "--oss-prefix", "oss://models/s/", *RESOURCES,
               "--image", JOB_IMAGE, "--dry-run", env=cloud_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and "is not a reward model" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def reward_service(emulator, reward_ckpt):
    proc = deploy(reward_ckpt, "reward_model", emulator, "--image", JOB_IMAGE)
    assert TOKEN not in proc.stdout + proc.stderr and "created EAS service reward_model" in proc.stderr
    base = re.search(r"Running at (\S+) \(POST /v1/score\)", proc.stdout).group(1)
    assert f"base_url: {base}" in proc.stdout and "api_key_env: PAI_DISTIL_REWARD_API_KEY" in proc.stdout
    return base


def test_grpo_reward_client_scores_through_the_emulated_eas_endpoint(reward_service, reward_ckpt, monkeypatch):
    from pai_distil.core.config import RewardEndpoint
    from pai_distil.core.contract import JobError
    from pai_distil_jobs.train.reward import RewardScorer
    from pai_distil_jobs.endpoints.reward_client import RemoteScorer

    endpoint = RewardEndpoint(base_url=reward_service, batch_size=2)
    monkeypatch.setenv("PAI_DISTIL_REWARD_API_KEY", TOKEN)
    prompts, completions = [PROMPT] * 3, [ITEM["completion"], "The answer is 5.", ""]
    scores = RemoteScorer(endpoint)(prompts, completions)
    assert scores == pytest.approx(RewardScorer(reward_ckpt).score(prompts, completions), abs=1e-5)
    monkeypatch.setenv("PAI_DISTIL_REWARD_API_KEY", "wrong-token")
    with pytest.raises(JobError, match="refused the key"):
        RemoteScorer(endpoint)(prompts[:1], completions[:1])


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong-token"}, 401),
    ({"Authorization": TOKEN}, 200),  # the bare token, as EAS's own examples send it
])
def test_reward_service_needs_the_service_token(reward_service, headers, status):
    import httpx

    r = httpx.post(f"{reward_service}/v1/score", headers=headers, json={"items": [ITEM]}, timeout=60)
    assert r.status_code == status, r.text
    assert status != 200 or len(r.json()["scores"]) == 1


def test_an_update_without_a_token_keeps_the_one_the_reward_server_checks(emulator, reward_service, reward_ckpt):
    import httpx

    proc = cli("deploy", "eas", str(reward_ckpt), "--name", "reward_model", "--oss-prefix",
               f"oss://models/reward_model/{reward_ckpt.name}/", *RESOURCES, "--image", JOB_IMAGE, "--timeout", "300",
               env=cloud_env(emulator))
    assert proc.returncode == 0 and "updated EAS service reward_model" in proc.stderr, proc.stderr
    r = httpx.post(f"{reward_service}/v1/score", headers={"Authorization": f"Bearer {TOKEN}"},
                   json={"items": [ITEM]}, timeout=60)
    assert r.status_code == 200, r.text


def test_describe_masks_the_token_in_the_reward_container_env(emulator, reward_service):
    described = cli("deploy", "describe", "reward_model", "--json", env=cloud_env(emulator))
    assert described.returncode == 0 and TOKEN not in described.stdout
    config = json.loads(json.loads(described.stdout)["ServiceConfig"])
    assert config["containers"][0]["env"] == [{"name": "PAI_DISTIL_REWARD_API_KEY", "value": "****"}]


def test_deploy_local_of_a_reward_model_points_to_reward_serve(reward_ckpt):
    proc = cli("deploy", "local", str(reward_ckpt), "--no-auth", env=cloud_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and "pai-distil reward serve" in proc.stderr and proc.stderr.count("\n") == 1


def test_gpus_memory_gib_and_whole_cpus_give_the_same_service_as_eas_units(ckpts):
    eas_units = dry_run(ckpts[0], "--resource-group", "eas-r-abc", "--cpu", "8", "--memory", "32768", "--gpu", "1")
    ours = dry_run(ckpts[0], "--resource-group", "eas-r-abc", "--cpu", "8.0", "--memory-gib", "32", "--gpus", "1")
    assert ours == eas_units and ours["metadata"]["memory"] == 32768 and ours["metadata"]["gpu"] == 1
