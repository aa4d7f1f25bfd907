"""`--backend pai` end to end against the emulator: the real oss2 and DLC clients, jobs that really
run, the same evaluation numbers as the process backend, unchanged files not sent again, a
preempted training job that resumes from OSS, the dry-run CreateJob body, one-line auth errors,
and no AccessKey secret anywhere."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import start_teacher
from emulator_support import ACCESS_KEY_SECRET, cli, configure, start_emulator


@pytest.fixture(scope="module")
def teacher():
    with start_teacher(api_key=None) as t:
        yield t


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


def micro_pipeline(teacher) -> dict:
    return {"name": "micro-pai", "stages": {
        "cots": {"stage": "generate", "config": {"teacher": {"base_url": teacher.base_url, "max_retries": 1},
                                                 "problems": {"n": 60, "seed": 1}}},
        "student": {"stage": "slow-thinking", "inputs": {"cots": "cots"},
                    "config": {"student": {"model": "preset:micro"},
                               "train": {"max_steps": 12, "batch_size": 8, "checkpoint_every": 6}}},
        "eval": {"stage": "evaluate", "inputs": {"student": "student"},
                 "config": {"problems": {"n": 12, "seed": 7}, "max_new_tokens": 32,
                            "models": [{"name": "untrained", "model": "preset:micro"},
                                       {"name": "distilled", "input": "student"}]}},
    }}


def report_numbers(home: Path) -> list:
    reports = list((home / "work").glob("evaluate-*/output/report.json"))
    assert len(reports) == 1
    data = json.loads(reports[0].read_text())
    return [(m["name"], m.get("accuracy"), m.get("mean_tokens"), m["levels"]) for m in data["models"]]


def training_curve(home: Path) -> list:
    metrics = next((home / "work").glob("slow-thinking-*/output/metrics.jsonl")).read_text().splitlines()
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, metrics)]


def test_pipeline_matches_process_backend_reruns_send_nothing_and_no_secret_leaks(emu, teacher, tmp_path):
    pipeline = tmp_path / "micro.yaml"
    pipeline.write_text(yaml.safe_dump(micro_pipeline(teacher)))
    local_home, pai_home = tmp_path / "process-home", tmp_path / "pai-home"

    local = cli(local_home, "run", pipeline, "--backend", "process")
    assert local.returncode == 0, local.stderr[-3000:]
    configure(pai_home, emu)
    pai = cli(pai_home, "run", pipeline, "--backend", "pai")
    assert pai.returncode == 0, pai.stderr[-3000:]
    assert report_numbers(pai_home) == report_numbers(local_home)
    assert training_curve(pai_home) == training_curve(local_home)  # the same training, step by step
    # the CLI showed uploads, the DLC job and its status, and the job's own log lines
    assert "uploaded " in pai.stderr and "DLC job dlc" in pai.stderr
    assert ": Running" in pai.stderr and ": Succeeded" in pai.stderr and "step 12/12" in pai.stderr

    # the same evaluation again (--force): its inputs and config are in OSS already, nothing is sent
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(yaml.safe_dump(micro_pipeline(teacher)["stages"]["eval"]["config"]))
    student = next((pai_home / "work").glob("slow-thinking-*/output"))
    again = cli(pai_home, "submit", "evaluate", "-c", eval_config, "-i", f"student={student}", "--backend", "pai",
                "--force")
    assert again.returncode == 0, again.stderr[-3000:]
    summaries = [line for line in again.stderr.splitlines() if line.startswith("uploaded ")]
    assert len(summaries) == 1 and summaries[0].startswith("uploaded 0 B in 0 file(s); 12 unchanged file(s)"), summaries
    assert report_numbers(pai_home) == report_numbers(local_home)

    # the secret is nowhere: CLI output, logs, run records, job specs, config, emulator state and log
    outputs = [pai.stdout, pai.stderr, again.stdout, again.stderr]
    assert not [o for o in outputs if ACCESS_KEY_SECRET in o]
    leaks = []
    for root in (pai_home, emu.data_dir, emu.log):
        for f in ([root] if root.is_file() else root.rglob("*")):
            if f.is_file() and ACCESS_KEY_SECRET.encode() in f.read_bytes():
                leaks.append(str(f))
    assert leaks == []
    assert list(emu.data_dir.rglob("*.json")) and (pai_home / "runs.sqlite").is_file()  # there was something to scan


def test_preempted_training_resumes_from_its_oss_checkpoint(emu, teacher, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": teacher.base_url}, "problems": {"n": 60, "seed": 3}}))
    cots = cli(home, "submit", "generate", "-c", gen, "--backend", "process")
    assert cots.returncode == 0, cots.stderr[-2000:]
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                     "train": {"max_steps": 24, "batch_size": 8, "checkpoint_every": 4}}))
    sub = cli(home, "submit", "slow-thinking", "-c", train, "-i", f"cots={cots.stdout.strip()}",
              "--backend", "pai", "--detach")
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_dir = next((home / "runs").glob("slow-thinking-*"))
    job_id = json.loads((run_dir / "dlc-job.json").read_text())["job_id"]

    deadline = time.monotonic() + 300
    while not list((emu.data_dir / "jobs" / job_id / "mounts").glob("*/step-*")):
        assert time.monotonic() < deadline, (run_dir / "job.log").read_text()[-2000:]
        time.sleep(0.5)
    pre = cli(home, "emulator", "preempt", job_id)
    assert pre.returncode == 0 and f"preempted {job_id}-worker-0" in pre.stdout, pre.stderr

    final = cli(home, "runs", "logs", "-f", run_dir.name, timeout=600)
    log = (run_dir / "job.log").read_text()
    assert "resuming from checkpoint" in log, log[-3000:]
    show = cli(home, "runs", "show", run_dir.name)
    assert "succeeded" in show.stdout, show.stdout + final.stderr[-2000:]
    metrics = [json.loads(x) for x in (home / "work").glob("slow-thinking-*/output/metrics.jsonl").__next__()
               .read_text().splitlines()]
    assert metrics[-1]["step"] == 24
    from alibabacloud_pai_dlc20201203 import models as m
    from emulator_support import dlc_client

    job = dlc_client(emu).get_job(job_id, m.GetJobRequest()).body
    assert job.status == "Succeeded" and job.restart_times == "1"
    assert any("preempted" in e for e in dlc_client(emu).get_job_events(job_id, m.GetJobEventsRequest()).body.events)


def test_dry_run_body_is_a_dlc_create_job_request(tmp_path):
    from alibabacloud_pai_dlc20201203 import models as m

    home = tmp_path / "home"
    for args in (["oss_bucket=prod-bucket", "ecs_spec=ml.gu8xf.8xlarge-gu108", "spot=true",
                  "spot_strategy=SpotWithPriceLimit", "spot_discount_limit=0.6", "workspace_id=ws-9",
                  "vpc_id=vpc-1", "switch_id=vsw-1", "security_group_id=sg-1", "max_running_minutes=600",
                  "priority=5", "image=registry.cn-hangzhou.aliyuncs.com/team/pai-distil:gpu"],):
        assert cli(home, "config", "set", *args).returncode == 0
    cots = tmp_path / "cots.jsonl"
    cots.write_text('{"id": "1", "problem": "1+1", "answer": "2", "thought": "1+1=2", "solution": "2", "correct": true}\n')
    proc = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--nodes", "4",
               "--nproc-per-node", "8", "--dry-run", secret="")  # no credentials needed for a dry run
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert m.CreateJobRequest().from_map(body).to_map() == body  # every field is one the SDK's model knows
    worker = body["JobSpecs"][0]
    assert (worker["Type"], worker["PodCount"], worker["EcsSpec"]) == ("Worker", 4, "ml.gu8xf.8xlarge-gu108")
    assert worker["UseSpotInstance"] is True
    assert worker["SpotSpec"] == {"SpotStrategy": "SpotWithPriceLimit", "SpotDiscountLimit": 0.6}
    assert body["JobType"] == "PyTorchJob" and body["Envs"]["NPROC_PER_NODE"] == "8"
    assert body["UserVpc"] == {"VpcId": "vpc-1", "SwitchId": "vsw-1", "SecurityGroupId": "sg-1"}
    assert body["Priority"] == 5 and body["JobMaxRunningTimeMinutes"] == 600 and body["WorkspaceId"] == "ws-9"
    mounts = {d["MountPath"]: d for d in body["DataSources"]}
    assert mounts["/mnt/pai-distil/output"]["MountAccess"] == "RW"
    assert mounts["/mnt/pai-distil/inputs/cots"]["Uri"].startswith("oss://prod-bucket/pai-distil/inputs/")
    assert body["Envs"]["PAI_DISTIL_INPUT_COTS"] == "/mnt/pai-distil/inputs/cots/cots.jsonl"
    assert body["Settings"]["Tags"]["pai-distil-run-id"] == body["DisplayName"]
    assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE"} & set(body["Envs"])  # DLC sets these per pod


def test_api_key_env_reaches_a_job_only_with_pass_secrets(emu, tmp_path):
    key = {"TEST_TEACHER_KEY": "teacher-key-7f3a"}
    home = tmp_path / "home"
    configure(home, emu)
    gen = tmp_path / "gen.yaml"
    with start_teacher(api_key=key["TEST_TEACHER_KEY"]) as t:
        gen.write_text(yaml.safe_dump({"teacher": {"base_url": t.base_url, "api_key_env": "TEST_TEACHER_KEY",
                                                   "max_retries": 0}, "problems": {"n": 6, "seed": 2}}))
        withheld = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", env=key)
        assert withheld.returncode != 0, withheld.stderr[-2000:]
        assert "not handed $TEST_TEACHER_KEY" in withheld.stderr and "pass_secrets=true" in withheld.stderr

        assert cli(home, "config", "set", "pass_secrets=true").returncode == 0
        dry = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", "--dry-run", env=key)
        assert json.loads(dry.stdout)["Envs"]["TEST_TEACHER_KEY"] == "***"
        handed = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", env=key)
        assert handed.returncode == 0, handed.stderr[-2000:]
        assert "not handed" not in handed.stderr and t.app.state.stats.completions == 6
    assert not [o for o in (dry.stdout, dry.stderr, handed.stdout, handed.stderr) if key["TEST_TEACHER_KEY"] in o]


def test_wrong_secret_is_one_line_from_the_cli(emu, teacher, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": teacher.base_url}, "problems": {"n": 4, "seed": 3}}))
    oss_refused = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", secret="not-the-secret")
    assert oss_refused.returncode != 0
    lines = oss_refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: OSS refused the credentials (SignatureDoesNotMatch)"), lines
    assert "Traceback" not in oss_refused.stderr and "not-the-secret" not in oss_refused.stderr
    no_keys = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", secret="")
    assert no_keys.returncode != 0 and len(no_keys.stderr.strip().splitlines()) == 1
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in no_keys.stderr


def test_failed_job_is_reported_with_its_reason_and_cancel_stops_the_dlc_job(emu, teacher, tmp_path):
    from alibabacloud_pai_dlc20201203 import models as m
    from emulator_support import dlc_client, free_port

    home = tmp_path / "home"
    configure(home, emu)
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
                                   "problems": {"n": 4, "seed": 3}}))
    failed = cli(home, "submit", "generate", "-c", gen, "--backend", "pai")
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run generate-") and "DLC job dlc" in last and "unreachable" in last, last

    gen.write_text(yaml.safe_dump({"teacher": {"base_url": teacher.base_url}, "problems": {"n": 60, "seed": 4}}))
    cots = cli(home, "submit", "generate", "-c", gen, "--backend", "process")
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"student": {"model": "preset:micro"}, "train": {"max_steps": 2000, "batch_size": 8}}))
    sub = cli(home, "submit", "slow-thinking", "-c", train, "-i", f"cots={cots.stdout.strip()}", "--backend", "pai",
              "--detach")
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_dir = next((home / "runs").glob("slow-thinking-*"))
    deadline = time.monotonic() + 120
    while "step " not in (run_dir / "job.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cancel = cli(home, "runs", "cancel", run_dir.name)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    job_id = json.loads((run_dir / "dlc-job.json").read_text())["job_id"]
    assert dlc_client(emu).get_job(job_id, m.GetJobRequest()).body.status == "Stopped"
    assert "stopping DLC job" in (run_dir / "job.log").read_text()
