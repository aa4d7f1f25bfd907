"""The `local` backend in real Docker containers, against the `process` backend.

Every test here shares one CPU image, built once per session from the offline wheelhouse with
the build's network disabled. Without a Docker engine these tests are skipped with the reason,
except where PAI_DISTIL_REQUIRE_DOCKER=1 (CI), where they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REQUIRE, ROOT, WHEELHOUSE, pairs_file, start_teacher
from pai_distil.cloud import images
from pai_distil.core import dockercli
from pai_distil.core.errors import UserError

pytestmark = pytest.mark.slow
SECRET = "planted-secret-7f3a9c1e5b"  # the teacher's API key: the job must get it, nothing may keep it
LOSS_TOLERANCE = 0.05  # relative difference of the final loss against one process
TRAIN = {"max_steps": 20, "batch_size": 16, "learning_rate": 0.005, "warmup_steps": 2, "log_every": 5,
         "checkpoint_every": 10, "max_length": 256}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_DISTIL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PAI_DISTIL_STOP_GRACE_S", "5")
    return tmp_path / "home"


def containers(run_id: str) -> list[str]:
    out = dockercli.docker("ps", "-aq", "--filter", f"label=pai-distil.run={run_id}").stdout
    return out.split()


def test_second_build_is_a_cache_hit_and_offline(cpu_image):
    created = dockercli.docker("image", "inspect", "--format", "{{.Id}}", cpu_image).stdout.strip()
    t0 = time.monotonic()
    assert images.build("cpu", wheelhouse_dir=WHEELHOUSE, quiet=True) == cpu_image
    elapsed = time.monotonic() - t0
    assert dockercli.docker("image", "inspect", "--format", "{{.Id}}", cpu_image).stdout.strip() == created
    os.environ.pop(images.IMAGE_ENV)
    try:
        assert images.default_image() == cpu_image  # what `--backend local` runs by default
    finally:
        os.environ[images.IMAGE_ENV] = cpu_image
    print(f"second `images build`: {elapsed:.2f} s")  # the same image, not rebuilt
    assert images.plan("cpu", wheelhouse_dir=WHEELHOUSE).network == "none"  # the build that made it had no network
    user = dockercli.docker("image", "inspect", "--format", "{{.Config.User}}", cpu_image).stdout.strip()
    assert user == "pai"
    version = dockercli.docker("run", "--rm", "--network", "none", cpu_image, "python", "-c",
                               "import sys, torch, deepspeed; print(sys.version_info[:2], torch.__version__)").stdout
    assert "(3, 11)" in version and "2.13.0" in version
    history = dockercli.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", cpu_image).stdout
    assert "pai_distil_jobs.smoke" in history  # the build proved the stack loads a model and trains


# -- the GPU image's Dockerfile, on this machine's CPU -------------------------------------------------


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    """A real, minimal wheel of one empty module that declares `requires`."""
    import base64
    import zipfile

    dist, module = f"{name.replace('-', '_')}-{version}", name.replace("-", "_")
    files = {
        f"{module}/__init__.py": b"",
        f"{dist}.dist-info/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                                                  *(f"Requires-Dist: {r}" for r in requires)]).encode() + b"\n",
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: pai-distil-tests\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b'=').decode()},"
              f"{len(body)}" for path, body in files.items()]
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n").encode()
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, body in files.items():
            z.writestr(name_in_zip, body)
    return path


def test_gpu_dockerfile_refuses_a_pin_that_needs_another_torch_and_proves_a_good_lock(cpu_image, tmp_path,
                                                                                      monkeypatch):
    """Dockerfile.gpu on the Debian base with the CPU wheelhouse (torch 2.13.0, the CPU build): a pin
    that needs torch >= 2.14 fails the build at pip's resolution, in one line naming both; the lock as
    it is installs, passes `pip check`, and its smoke check trains one step."""
    import shutil

    tree = tmp_path / "tree"
    for name in ("images", "pai_distil", "jobs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    monkeypatch.setattr(images, "ROOT", tree)
    monkeypatch.setattr(images, "IMAGES_DIR", tree / "images")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for w in WHEELHOUSE.glob("*.whl"):
        os.link(w, wheels / w.name)
    _wheel(wheels, "needs-newer-torch", "1.0", ["torch>=2.14"])
    lock = (ROOT / "images" / "requirements.txt").read_text()
    (tree / "images" / "requirements-gpu.txt").write_text(lock + "needs-newer-torch==1.0\n")
    t0 = time.monotonic()
    with pytest.raises(UserError) as refused:
        images.build("gpu", base=images.BASE_TAG, wheelhouse_dir=wheels, quiet=True)
    message = refused.value.message
    print(f"refused in {time.monotonic() - t0:.0f} s: {message}")
    assert message.endswith("failed: pins that do not fit together: needs-newer-torch 1.0 depends on torch>=2.14, "
                            "but the lock pins torch==2.13.0"), message

    (tree / "images" / "requirements-gpu.txt").write_text(lock)
    tag = images.build("gpu", base=images.BASE_TAG, wheelhouse_dir=wheels, quiet=True)
    try:
        out = dockercli.docker("run", "--rm", "--network", "none", tag, "python", "-c",
                               "import transformers, torch; from transformers.utils import is_torch_available; "
                               "print(transformers.__version__, torch.__version__, is_torch_available())").stdout
        assert out.split() == ["5.24.0", "2.13.0+cpu", "True"]
        history = dockercli.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
        assert "pai_distil_jobs.smoke" in history
    finally:
        dockercli.docker("rmi", "--force", tag, check=False, timeout=None)  # a few GB: slow on a busy disk


# -- the example pipeline on both backends --------------------------------------------------------


def _pipeline(tmp_path: Path, base_url: str) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "slow-thinking-small.yaml").read_text())
    spec["stages"]["cots"]["config"]["teacher"]["base_url"] = base_url
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run_pipeline(path: Path, backend: str, home: Path) -> dict:
    env = {**os.environ, "PAI_DISTIL_HOME": str(home), "PAI_DISTIL_TEACHER_API_KEY": SECRET}
    proc = subprocess.run([sys.executable, "-m", "pai_distil", "run", str(path), "--backend", backend],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    from pai_distil.run.registry import Registry

    runs = {r.stage: r for r in Registry(home / "runs.sqlite").list()}
    return {stage: Path(r.output) for stage, r in runs.items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbers(report: dict) -> list[dict]:
    keep = ("n", "accuracy", "pass_at_n", "mean_tokens", "tokens_per_correct", "truncated")
    return [{"name": m["name"], "overall": {k: m["overall"][k] for k in keep},
             "levels": {lv: {k: s[k] for k in keep} for lv, s in m["levels"].items()}} for m in report["models"]]


def _scan(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_pipeline_gives_the_same_results_as_the_process_backend(cpu_image, tmp_path):
    with start_teacher(api_key=SECRET) as teacher:
        path = _pipeline(tmp_path, teacher.base_url)
        t0 = time.monotonic()
        proc_out = _run_pipeline(path, "process", tmp_path / "home-process")
        t1 = time.monotonic()
        local_out = _run_pipeline(path, "local", tmp_path / "home-local")
        t2 = time.monotonic()
    print(f"pipeline: process {t1 - t0:.0f} s, local {t2 - t1:.0f} s")
    if not REQUIRE and images.plan("cpu").tag != cpu_image:
        pytest.skip("the code changed while the test ran (the process backend ran newer code than the image)")
    # datasets: identical bytes, file by file as the manifests list them
    manifests = [json.loads((out["generate"] / "manifest.json").read_text()) for out in (proc_out, local_out)]
    files = [{f["path"]: f["sha256"] for f in m["files"]} for m in manifests]
    print("generate artifact sha256:", json.dumps(files[0]))
    assert files[0] == files[1] and {"cots.jsonl", "sft.jsonl"} <= set(files[0])
    # training and evaluation: the same numbers (tolerance 0: same seeds, same CPU, same torch)
    losses = [[json.loads(x)["loss"] for x in (out["slow-thinking"] / "metrics.jsonl").read_text().splitlines()]
              for out in (proc_out, local_out)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    reports = [json.loads((out["evaluate"] / "report.json").read_text()) for out in (proc_out, local_out)]
    print("evaluate (process):", json.dumps(_numbers(reports[0])))
    print("evaluate (local):  ", json.dumps(_numbers(reports[1])))
    assert _numbers(reports[0]) == _numbers(reports[1])
    for stage, name in (("slow-thinking", "model.safetensors"), ("evaluate", "predictions.jsonl")):
        assert _sha(proc_out[stage] / name) == _sha(local_out[stage] / name), f"{stage}: {name} differs"
    # the teacher's key reached the generate container (it answered) and was kept nowhere
    home = tmp_path / "home-local"
    assert _scan(home) == []
    run_ids = [p.name for p in (home / "runs").iterdir()]
    for run_id in run_ids:
        assert containers(run_id) == []
        inspect = dockercli.docker("inspect", f"pai-distil-{run_id}-node0", check=False)
        assert inspect.returncode != 0 and SECRET not in inspect.stdout
    assert SECRET not in dockercli.docker("image", "inspect", cpu_image).stdout
    layers = subprocess.run(f"docker save {cpu_image} | grep -c -a -F {SECRET} || true", shell=True,
                            capture_output=True, text=True, timeout=600, env=dockercli.env())
    assert layers.stdout.strip() == "0", "the secret is in an image layer"


# -- distributed training in containers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cots_file(tmp_path_factory) -> Path:
    """Verified chains of thought written by the oracle teacher, without a server."""
    from pai_distil.core import oracle as teacher, world

    path = tmp_path_factory.mktemp("cots") / "cots.jsonl"
    with open(path, "w") as f:
        for p in world.generate_problems(256, seed=5):
            f.write(json.dumps({"id": p.id, "problem": p.text, "answer": p.answer, "thought": teacher.write_thought(p, 4),
                                "solution": teacher.solution_text(p.answer), "correct": True}) + "\n")
    return path


def _train(cots: Path, backend: str, nodes: int = 1, procs: int = 1, deepspeed: dict | None = None,
           max_steps: int = TRAIN["max_steps"], detach: bool = False):
    from pai_distil.run.submission import execute, prepare

    config = {"student": {"model": "preset:micro", "seed": 0},
              "train": {**TRAIN, "max_steps": max_steps, **({"deepspeed": deepspeed} if deepspeed else {})}}
    prep = prepare("slow-thinking", config, {"cots": str(cots)}, where="test", nodes=nodes, procs_per_node=procs)
    return execute(prep, backend, detach=detach, force=True)  # nodes and backend are not in the cache key


def _losses(record) -> list[float]:
    return [json.loads(x)["loss"] for x in (Path(record.output) / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_and_deepspeed_zero2_follow_the_single_process_loss(cpu_image, cots_file, home):
    single = _losses(_train(cots_file, "process"))
    two_nodes = _losses(_train(cots_file, "local", nodes=2))
    zero2 = _train(cots_file, "local", procs=2, deepspeed={"stage": 2})
    ds = _losses(zero2)
    print(f"loss single process {single}\nloss 2 nodes x 1 (gloo) {two_nodes}\nloss 1 node x 2 ZeRO-2 {ds}")
    for curve in (two_nodes, ds):
        assert len(curve) == len(single)
        assert curve[-1] < 0.8 * curve[0], "the loss must fall"
        assert abs(curve[-1] - single[-1]) / single[-1] < LOSS_TOLERANCE
    assert json.loads((Path(zero2.output) / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 2
    ckpt = max((Path(zero2.work_dir) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert list(ckpt.glob("global_step*")) and (ckpt / "COMPLETE").exists()  # DeepSpeed's sharded state


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _started_two_nodes(cots: Path):
    from pai_distil.run.registry import Registry

    record = _train(cots, "local", nodes=2, max_steps=100_000, detach=True)
    registry = Registry()
    _wait(lambda: "[node-0] step" in Path(record.log_path).read_text(), 300, "the first training steps")
    assert len(containers(record.id)) == 2
    return record, registry


def test_a_killed_node_fails_the_run_with_its_log_tail(cpu_image, cots_file, home):
    record, registry = _started_two_nodes(cots_file)
    dockercli.docker("kill", f"pai-distil-{record.id}-node0")  # the node that logs: its tail is shown
    final = _wait(lambda: (r := registry.get(record.id)).terminal and r, 120, "the run to end")
    print(f"killed node: state {final.state}, exit code {final.exit_code}, error: {final.error}")
    assert final.state == "failed" and final.exit_code == 137
    assert final.error.startswith("node 0: killed") and "; last line: " in final.error, final.error
    log = Path(final.log_path).read_text()
    tail = log.split("node 0 failed with exit code 137; its last lines:\n", 1)[1]
    assert "  [node-0] step " not in tail and "  step " in tail  # its own lines, as it wrote them
    assert containers(record.id) == []


def test_cancel_stops_every_container(cpu_image, cots_file, home):
    from pai_distil.backends import get_backend

    record, registry = _started_two_nodes(cots_file)
    final = get_backend("local", registry).cancel(registry.get(record.id))
    assert final.state == "cancelled"
    assert containers(record.id) == []
    assert "cancel requested" in Path(final.log_path).read_text()


# -- dpo in containers --------------------------------------------------------------------------------


def test_dpo_in_a_container_gives_the_process_backends_numbers_and_runs_on_two_processes(cpu_image, tmp_path, home):
    from pai_distil.run.submission import execute, prepare

    pairs = pairs_file(tmp_path / "pairs.jsonl", n=48)
    config = {"student": {"model": "preset:micro"},
              "train": {"max_steps": 12, "batch_size": 8, "learning_rate": 2e-3, "log_every": 4, "checkpoint_every": 6}}

    def dpo(backend: str, procs: int = 1):
        prep = prepare("dpo", config, {"pairs": str(pairs)}, where="test", procs_per_node=procs)
        record = execute(prep, backend, force=True)
        assert record.state == "succeeded", record.error
        out = Path(record.output)
        return _losses(record), json.loads((out / "report.json").read_text())["held_out"]

    (single, single_report), (local, local_report) = dpo("process"), dpo("local")
    print(f"dpo loss process {single}, local {local}; held-out after: {local_report['after']}")
    assert local == pytest.approx(single, rel=1e-3) and local_report == single_report
    two, two_report = dpo("local", procs=2)  # DDP over gloo; the held-out report from rank 0
    print(f"dpo loss local 1 node x 2 processes {two}; held-out after: {two_report['after']}")
    assert len(two) == len(single) and two[-1] < two[0] and two_report["pairs"] == single_report["pairs"]
