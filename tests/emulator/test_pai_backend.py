"""`--backend pai` end to end against the emulator: the real oss2 and DLC clients, jobs that really
run; examples/slow-thinking-small.yaml with the same evaluation numbers as the process backend and
its stage outputs passed inside OSS; unchanged files not sent again; a preempted training job that
resumes from OSS, restarted by DLC or resubmitted by the client; a 10,000-line log shown whole; the
dry-run CreateJob body and the job shapes refused; one-line auth errors; no AccessKey secret anywhere."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import pairs_file, start_teacher, wait_until
from emulator_support import ACCESS_KEY_SECRET, BUCKET, cli, configure, start_emulator


@pytest.fixture(scope="module")
def teacher():
    with start_teacher(api_key=None) as t:
        yield t


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slow-thinking-small.yaml"


def example_pipeline(teacher) -> dict:
    """examples/slow-thinking-small.yaml as a new user runs it, against this test's synthetic teacher."""
    pipeline = yaml.safe_load(EXAMPLE.read_text())
    pipeline["stages"]["cots"]["config"]["teacher"] = {"base_url": teacher.base_url, "model": "oracle-noisy",
                                                       "max_retries": 1}
    return pipeline


def report_numbers(home: Path) -> list:
    reports = list((home / "work").glob("evaluate-*/output/report.json"))
    assert len(reports) == 1
    data = json.loads(reports[0].read_text())
    return [(m["name"], m.get("accuracy"), m.get("mean_tokens"), m["levels"]) for m in data["models"]]


def training_curve(home: Path) -> list:
    metrics = next((home / "work").glob("slow-thinking-*/output/metrics.jsonl")).read_text().splitlines()
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, metrics)]


def test_pipeline_matches_process_backend_reruns_send_nothing_and_no_secret_leaks(emu, teacher, tmp_path):
    pipeline = tmp_path / "slow-thinking-small.yaml"
    pipeline.write_text(yaml.safe_dump(example_pipeline(teacher)))
    local_home, pai_home = tmp_path / "process-home", tmp_path / "pai-home"

    local = cli(local_home, "run", pipeline, "--backend", "process")
    assert local.returncode == 0, local.stderr[-3000:]
    configure(pai_home, emu)
    pai = cli(pai_home, "run", pipeline, "--backend", "pai")
    assert pai.returncode == 0, pai.stderr[-3000:]
    assert report_numbers(pai_home) == report_numbers(local_home)
    # the CLI showed uploads, the DLC job and its status, and the job's own log lines
    assert "uploaded " in pai.stderr and "DLC job dlc" in pai.stderr
    assert ": Running" in pai.stderr and ": Succeeded" in pai.stderr and "step 30/30" in pai.stderr

    # stage outputs went from stage to stage inside OSS: of the intermediate outputs the client read
    # nothing but their manifests, and they are not on this machine
    reads = [k.split(" ", 1)[1] for k in emu.counters() if k.startswith("GetObject ")]
    intermediate = [k for k in reads if "/work/generate-" in k or "/work/slow-thinking-" in k]
    assert intermediate and all(k.endswith("/output/manifest.json") for k in intermediate), intermediate
    assert any("/work/evaluate-" in k and k.endswith("report.json") for k in reads)  # the final stage came home
    assert "input cots: oss://" in pai.stderr and "input student: oss://" in pai.stderr
    assert not list((pai_home / "work").glob("slow-thinking-*/output/*.safetensors"))
    # `runs pull` brings one home, checked by its manifest: the same training, step by step
    student_run = next(r for r in (pai_home / "runs").iterdir() if r.name.startswith("slow-thinking-"))
    pulled = cli(pai_home, "runs", "pull", student_run.name)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert training_curve(pai_home) == training_curve(local_home)
    assert cli(pai_home, "runs", "show", student_run.name).stdout.count(pulled.stdout.strip()) >= 1
    # the pipeline again: every stage a cache hit, outputs in OSS included; no DLC job
    rerun = cli(pai_home, "run", pipeline, "--backend", "pai")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("cache hit") == 3 and "DLC job dlc" not in rerun.stderr, rerun.stderr[-3000:]

    # the same evaluation again (--force): its inputs and config are in OSS already, nothing is sent
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(yaml.safe_dump(example_pipeline(teacher)["stages"]["eval"]["config"]))
    student = next((pai_home / "work").glob("slow-thinking-*/output"))
    student_uri = f"oss://{BUCKET}/pai-distil/work/{student.parent.name}/output/"  # an input named where it is
    again = cli(pai_home, "submit", "evaluate", "-c", eval_config, "-i", f"student={student_uri}", "--backend", "pai",
                "--force", "--download")
    assert again.returncode == 0, again.stderr[-3000:]
    summaries = [line for line in again.stderr.splitlines() if line.startswith("uploaded ")]
    assert len(summaries) == 1 and summaries[0].startswith("uploaded 0 B in 0 file(s); 1 unchanged file(s)"), summaries
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


def train_until_a_checkpoint(emu, teacher, tmp_path, home: Path, seed: int, steps: int) -> tuple[Path, str]:
    """A slow-thinking run on pai (its output to come home), once its first checkpoint is in the job's
    mounts; returns its run dir and DLC job id."""
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": teacher.base_url}, "problems": {"n": 60, "seed": seed}}))
    cots = cli(home, "submit", "generate", "-c", gen, "--backend", "process")
    assert cots.returncode == 0, cots.stderr[-2000:]
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                     "train": {"max_steps": steps, "batch_size": 8, "checkpoint_every": 4}}))
    sub = cli(home, "submit", "slow-thinking", "-c", train, "-i", f"cots={cots.stdout.strip()}",
              "--backend", "pai", "--detach", "--download")
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_dir = next((home / "runs").glob("slow-thinking-*"))
    job_id = json.loads((run_dir / "dlc-job.json").read_text())["job_id"]
    deadline = time.monotonic() + 300
    while not list((emu.data_dir / "jobs" / job_id / "mounts").glob("*/checkpoint-*/COMPLETE")):
        assert time.monotonic() < deadline, (run_dir / "job.log").read_text()[-2000:]
        time.sleep(0.5)
    return run_dir, job_id


def test_preempted_training_on_a_quota_restarts_in_place_from_its_oss_checkpoint(emu, teacher, tmp_path):
    home = tmp_path / "home"
    configure(home, emu, quota_id="quota-test")  # a quota restarts the pods; general-purpose resources fail the job
    run_dir, job_id = train_until_a_checkpoint(emu, teacher, tmp_path, home, seed=3, steps=24)
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
    assert cli(home, "config", "set", "oss_bucket=prod-bucket", "ecs_spec=ecs.gn7i-c8g1.2xlarge", "spot=true",
               "workspace_id=ws-9", "vpc_id=vpc-1", "switch_id=vsw-1", "security_group_id=sg-1",
               "max_running_minutes=600", "priority=5",
               "image=registry.cn-hangzhou.aliyuncs.com/team/pai-distil:gpu").returncode == 0
    cots = tmp_path / "cots.jsonl"
    cots.write_text('{"id": "1", "problem": "1+1", "answer": "2", "thought": "1+1=2", "solution": "2", "correct": true}\n')
    proc = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--nodes", "2",
               "--gpus", "8", "--cpu", "64", "--memory", "512", "--dry-run", secret="")  # no credentials needed
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert m.CreateJobRequest().from_map(body).to_map() == body  # every field is one the SDK's model knows
    worker = body["JobSpecs"][0]
    assert (worker["Type"], worker["PodCount"], worker["EcsSpec"]) == ("Worker", 2, "ecs.gn7i-c8g1.2xlarge")
    assert worker["UseSpotInstance"] is True
    assert worker["SpotSpec"] == {"SpotStrategy": "SpotWithPriceLimit", "SpotDiscountLimit": 0.8}  # the default
    assert worker["ResourceConfig"] == {"CPU": "64", "GPU": "8", "Memory": "512Gi", "SharedMemory": "8Gi"}
    assert body["JobType"] == "PyTorchJob" and "NPROC_PER_NODE" not in body["Envs"]  # DLC sets it: 8 GPUs
    assert body["UserVpc"] == {"VpcId": "vpc-1", "SwitchId": "vsw-1", "SecurityGroupId": "sg-1"}
    assert body["Priority"] == 5 and body["JobMaxRunningTimeMinutes"] == 600 and body["WorkspaceId"] == "ws-9"
    mounts = {d["MountPath"]: d for d in body["DataSources"]}
    assert mounts["/mnt/pai-distil/output"]["MountAccess"] == "RW"
    # jobs reach OSS through the region's internal endpoint
    assert mounts["/mnt/pai-distil/inputs/cots"]["Uri"].startswith(
        "oss://prod-bucket.oss-cn-hangzhou-internal.aliyuncs.com/pai-distil/inputs/")
    assert body["Envs"]["PAI_DISTIL_INPUT_COTS"] == "/mnt/pai-distil/inputs/cots/cots.jsonl"
    assert body["Settings"]["Tags"]["pai-distil-run-id"] == body["DisplayName"]
    assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE"} & set(body["Envs"])  # DLC sets these per pod
    assert body["Envs"]["PAI_DISTIL_GPUS"] == "8"  # the job fails in one line where its torch cannot use them

    # a price limit instead of the discount; processes per node only when asked for
    assert cli(home, "config", "set", "spot_price_limit=0.4").returncode == 0
    priced = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--nproc-per-node", "4",
                 "--dry-run", secret="")
    body = json.loads(priced.stdout)
    assert body["JobSpecs"][0]["SpotSpec"] == {"SpotStrategy": "SpotWithPriceLimit", "SpotPriceLimit": 0.4}
    assert body["Envs"]["NPROC_PER_NODE"] == "4"
    assert body["JobSpecs"][0]["ResourceConfig"] == {"SharedMemory": "8Gi"}  # a GPU type: /dev/shm for NCCL
    both = cli(home, "config", "set", "spot_discount_limit=0.5")
    assert both.returncode != 0 and "spot_discount_limit and spot_price_limit" in both.stderr


def test_job_shapes_that_would_fail_on_dlc_are_refused_in_one_line(tmp_path):
    home = tmp_path / "home"
    assert cli(home, "config", "set", "oss_bucket=b", "ecs_spec=ecs.gn7i-c8g1.2xlarge", "image=x:1").returncode == 0
    cots = tmp_path / "cots.jsonl"
    cots.write_text('{"id": "1", "problem": "1+1", "answer": "2", "thought": "1+1=2", "solution": "2", "correct": true}\n')
    for stage in ("generate", "score", "evaluate"):
        proc = cli(home, "submit", stage, "--nodes", "2", "--backend", "pai", secret="")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (stage, proc.stderr)
        assert f"stage {stage} runs in one process" in lines[0] and "--nodes 1" in lines[0]
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"train": {"batch_size": 8}}))
    proc = cli(home, "submit", "slow-thinking", "-c", small, "-i", f"cots={cots}", "--nodes", "2", "--gpus", "8",
               "--backend", "pai", "--dry-run", secret="")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "train.batch_size 8 is below the 16 processes" in lines[0]
    assert "Traceback" not in proc.stderr
    wrong = cli(home, "submit", "generate", "--download", "--backend", "process", secret="")
    assert wrong.returncode == 2 and "--download applies to --backend pai only" in wrong.stderr


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
    # pre-flight (ListEcsSpecs) is the first call, before any upload; without it, OSS is
    dlc_refused = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", secret="not-the-secret")
    lines = dlc_refused.stderr.strip().splitlines()
    assert dlc_refused.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("error: PAI-DLC refused the credentials (SignatureDoesNotMatch)"), lines
    oss_refused = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", "--no-preflight", secret="not-the-secret")
    assert oss_refused.returncode != 0
    lines = [line for line in oss_refused.stderr.strip().splitlines() if not line.startswith("cost: ")]
    assert len(lines) == 1 and lines[0].startswith("error: OSS refused the credentials (SignatureDoesNotMatch)"), lines
    for proc in (dlc_refused, oss_refused):
        assert "Traceback" not in proc.stderr and "not-the-secret" not in proc.stderr
    no_keys = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", secret="")
    assert no_keys.returncode != 0 and len(no_keys.stderr.strip().splitlines()) == 1
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in no_keys.stderr


def test_failed_job_is_reported_with_its_reason_and_cancel_stops_the_dlc_job(emu, teacher, tmp_path):
    from alibabacloud_pai_dlc20201203 import models as m
    from emulator_support import dlc_client, free_port

    home = tmp_path / "home"
    configure(home, emu, max_restarts="2")
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
                                   "problems": {"n": 4, "seed": 3}}))
    failed = cli(home, "submit", "generate", "-c", gen, "--backend", "pai")
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run generate-") and "DLC job dlc" in last and "unreachable" in last, last
    gen_run = next((home / "runs").glob("generate-*")).name  # failed in its own code: not submitted again
    assert "1 of at most 3: dlc" in cli(home, "runs", "show", gen_run).stdout

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


def test_runs_logs_follow_shows_all_10000_lines_of_a_pod_once_each(emu, tmp_path):
    """GetPodLogs returns 2,000 lines a call; a run's log still gets every line of a chatty job."""
    import subprocess
    import sys

    from emulator_support import WRITE_MANIFEST, client_env, dlc_run

    home = tmp_path / "home"
    configure(home, emu)
    run_id = "chatty-20261202-000000-0001"
    command = ("for i in $(seq 1 5000); do echo \"line $i\"; done; sleep 1; "
               "for i in $(seq 5001 10000); do echo \"line $i\"; done; " + WRITE_MANIFEST)
    job_id, directory, registry_path = dlc_run(emu, home, command, run_id, pods=2)
    supervisor = subprocess.Popen([sys.executable, "-m", "pai_distil.backends.pai_supervisor", run_id,
                                   str(registry_path)], env=client_env(home), stdout=open(directory / "job.log", "ab"),
                                  stderr=subprocess.STDOUT)
    from pai_distil.run.registry import Registry

    wait_until(lambda: Registry(registry_path).get(run_id).supervisor_pid, timeout=60)  # else logs -f attaches
    followed = cli(home, "runs", "logs", "-f", run_id, timeout=300)
    assert supervisor.wait(timeout=60) == 0
    assert followed.returncode == 0, followed.stderr
    for pod in (f"{job_id}-worker-0", f"{job_id}-worker-1"):
        lines = [x.split("] ", 1)[1] for x in followed.stdout.splitlines() if x.startswith(f"[{pod}] line ")]
        assert lines == [f"line {i}" for i in range(1, 10001)], (pod, len(lines))
    assert "succeeded" in cli(home, "runs", "show", run_id).stdout


def test_preemption_dlc_reports_as_failure_is_resubmitted_and_resumes(emu, teacher, tmp_path):
    home = tmp_path / "home"
    configure(home, emu, spot="true")  # spot: up to 3 resubmissions by default
    run_dir, first = train_until_a_checkpoint(emu, teacher, tmp_path, home, seed=5, steps=16)
    pre = cli(home, "emulator", "preempt", first)  # general-purpose resources: DLC fails the job
    assert pre.returncode == 0 and "DLC reports the job failed" in pre.stdout, pre.stderr

    cli(home, "runs", "logs", "-f", run_dir.name, timeout=600)
    log = (run_dir / "job.log").read_text()
    show = cli(home, "runs", "show", run_dir.name).stdout
    assert "succeeded" in show, show + log[-3000:]
    info = json.loads((run_dir / "dlc-job.json").read_text())
    assert [a["status"] for a in info["attempts"]] == ["Failed", "Succeeded"]
    assert info["attempts"][0] == {"job_id": first, "status": "Failed", "reason": "JobPreempted"}
    assert f"2 of at most 4: {first} Failed (JobPreempted), {info['job_id']} Succeeded" in show
    assert "submitting attempt 2" in log and "resuming from checkpoint" in log
    metrics = next((home / "work").glob("slow-thinking-*/output/metrics.jsonl")).read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == 16


def test_dpo_on_pai_gives_the_process_backends_report(emu, tmp_path):
    """The dpo stage with a local pairs file on `--backend pai`: uploaded, run as a DLC job, its output
    home with --download, the same training and held-out preference as the process backend."""
    pairs = pairs_file(tmp_path / "pairs.jsonl", n=32)
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                   "train": {"max_steps": 6, "batch_size": 8, "log_every": 2}}))
    local_home, pai_home = tmp_path / "process-home", tmp_path / "pai-home"
    local = cli(local_home, "submit", "dpo", "-c", cfg, "-i", f"pairs={pairs}", "--backend", "process")
    assert local.returncode == 0, local.stderr[-3000:]
    configure(pai_home, emu)
    pai = cli(pai_home, "submit", "dpo", "-c", cfg, "-i", f"pairs={pairs}", "--backend", "pai", "--download")
    assert pai.returncode == 0, pai.stderr[-3000:]
    assert "DLC job dlc" in pai.stderr and "step 6/6" in pai.stderr
    outputs = [Path(p.stdout.strip().splitlines()[-1]) for p in (local, pai)]
    reports = [json.loads((out / "report.json").read_text()) for out in outputs]
    assert reports[0]["held_out"] == reports[1]["held_out"] and reports[1]["steps"] == 6
    curves = [[(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
              for out in outputs]
    assert curves[0] == curves[1]


def test_a_submitted_output_stays_in_oss_until_asked_for(emu, teacher, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"teacher": {"base_url": teacher.base_url}, "problems": {"n": 6, "seed": 8}}))
    first = cli(home, "submit", "generate", "-c", gen, "--backend", "pai")
    assert first.returncode == 0, first.stderr[-2000:]
    uri = first.stdout.strip()
    assert uri.startswith(f"oss://{BUCKET}/pai-distil/work/generate-") and uri.endswith("/output/")
    assert not list((home / "work").glob("generate-*/output/*.jsonl"))  # nothing came home
    assert f"output in OSS: {uri} (" in first.stderr
    # asked for it later: the cache hit is brought home, checked by its manifest
    again = cli(home, "submit", "generate", "-c", gen, "--backend", "pai", "--download")
    assert again.returncode == 0 and "cache hit" in again.stderr, again.stderr[-2000:]
    local = Path(again.stdout.strip())
    assert local.is_dir() and (local / "manifest.json").is_file() and list(local.glob("*.jsonl"))
    from pai_distil.core import artifacts

    artifacts.verify(local)
