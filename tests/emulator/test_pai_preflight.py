"""Pre-flight against the emulator's ListEcsSpecs, before anything is uploaded: GPUs per node, the
driver for the image's CUDA, spot stock, each refused in one line; the cost line; and a 2-node x 8-GPU
spot dry run whose CreateJob body carries the production settings and passes the emulator's strict
CreateJob checks."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from alibabacloud_pai_dlc20201203 import models as m
from emulator_support import BUCKET, cli, configure, dlc_client, start_emulator

from pai_distil.cloud.pai import preflight
from pai_distil.core.config import JobSpec


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


@pytest.fixture
def cots(one_cot):
    return one_cot


def uploads(emu) -> list[str]:
    return [k for k in emu.counters() if k.startswith("PutObject ")]


def one_line_refusal(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_nodes_that_cannot_run_the_job_are_refused_before_upload(emu, tmp_path, cots):
    home = tmp_path / "home"
    configure(home, emu, ecs_spec="ecs.gn7i-c32g1.32xlarge", image_cuda="12.4")
    before = uploads(emu)
    eight = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--nproc-per-node", "8")
    assert "--nproc-per-node 8 is more than the 4 GPU(s) of ecs_spec ecs.gn7i-c32g1.32xlarge" in one_line_refusal(eight)
    gpus = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--gpus", "8",
               "--ecs-spec", "ecs.gn7i-c8g1.2xlarge")
    assert "--gpus 8 contradicts ecs_spec ecs.gn7i-c8g1.2xlarge, which has 1 GPU(s)" in one_line_refusal(gpus)
    assert cli(home, "config", "set", "image_cuda=13.0").returncode == 0
    cuda = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai")
    assert "none of which runs the image's CUDA 13.0 (needs >= 580.65.06)" in one_line_refusal(cuda)
    assert cli(home, "config", "set", "image_cuda=12.4", "spot=true").returncode == 0
    stock = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai",
                "--ecs-spec", "ecs.gn7e-c16g1.32xlarge")
    assert "has no spot stock now (NoStock)" in one_line_refusal(stock) and "spot=false" in stock.stderr
    unknown = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--ecs-spec", "ecs.gn99.x")
    assert "ecs_spec ecs.gn99.x is not an instance type DLC offers" in one_line_refusal(unknown)
    assert uploads(emu) == before  # nothing was sent
    skipped = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--nproc-per-node", "8",
                  "--no-preflight", "--dry-run")
    assert skipped.returncode == 0, skipped.stderr


def test_two_node_eight_gpu_spot_dry_run_has_production_settings_and_cost_and_dlc_accepts_it(emu, tmp_path, cots):
    home = tmp_path / "home"
    configure(home, emu, ecs_spec="ecs.gn6v-c8g1.16xlarge", spot="true", image_cuda="12.4",
              ram_role_arn="acs:ram::1234567890:role/pai-distil-job")
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"train": {"batch_size": 32}}))
    dry = cli(home, "submit", "slow-thinking", "-c", train, "-i", f"cots={cots}", "--backend", "pai", "--nodes", "2",
              "--nproc-per-node", "8", "--price-per-hour", "26.5", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)
    worker = body["JobSpecs"][0]
    assert (worker["PodCount"], worker["EcsSpec"], worker["UseSpotInstance"]) == (2, "ecs.gn6v-c8g1.16xlarge", True)
    assert worker["ResourceConfig"] == {"SharedMemory": "8Gi"} and body["Envs"]["NPROC_PER_NODE"] == "8"
    assert body["Accessibility"] == "PRIVATE" and body["JobMaxRunningTimeMinutes"] == 4320
    assert body["Settings"]["TerminationGracePeriodSeconds"] == 600
    assert body["Settings"]["Driver"] == "550.127.08"  # the lowest the node offers that runs CUDA 12.4
    [item] = body["CredentialConfig"]["CredentialConfigItems"]
    assert item["Roles"][0]["RoleArn"] == "acs:ram::1234567890:role/pai-distil-job"
    assert "cost: 2 node(s) × 8 GPU(s) (ecs.gn6v-c8g1.16xlarge, NVIDIA V100)" in dry.stderr
    assert "53.00 per hour (price from --price-per-hour)" in dry.stderr and "GPU-hours" in dry.stderr
    # the strict emulator (ECS type, sizes, spot, body limit) takes it as DLC would
    client = dlc_client(emu)
    job_id = client.create_job(m.CreateJobRequest().from_map(body)).body.job_id
    client.stop_job(job_id)
    assert body["WorkspaceId"] == "ws-test" and BUCKET in json.dumps(body["DataSources"])


def test_cost_line_with_the_plans_gpu_hours():
    spec = JobSpec(run_id="r", stage="slow-thinking", command=["x"], config={}, output="/o", checkpoint_dir="/c",
                   nodes=2, procs_per_node=8)
    node = preflight.NodeType("ecs.gn6v-c8g1.16xlarge", 64, 256, 8, "NVIDIA V100", 16, [], None, "WithStock")
    line = preflight.cost_line(spec, node, gpu_hours=32.0, price_per_hour=26.5)
    assert "32.0 GPU-hours, 2.00 h (from the plan)" in line and "2 × 2.00 h × 26.5/h = 106.00" in line
    assert "price unknown: pass --price-per-hour" in preflight.cost_line(spec, node, None, None)


def test_a_real_model_is_planned_on_the_nodes_gpus_before_upload(emu, tmp_path, cots):
    """Qwen3-8B at 8k: on 8 A100s of 80 GiB the plan's GPU-hours reach the cost line; on 8 V100s of 16 GiB it
    is refused before anything is uploaded, naming the knob; --no-plan submits it anyway."""
    home = tmp_path / "home"
    configure(home, emu, ecs_spec="ecs.gn7e-c16g1.32xlarge", image_cuda="12.4")
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"student": {"model": "Qwen/Qwen3-8B"}, "train": {"max_length": 8192}}))
    args = ("submit", "slow-thinking", "-c", train, "-i", f"cots={cots}", "--backend", "pai", "--price-per-hour", "30",
            "--dry-run")
    dry = cli(home, *args)
    assert dry.returncode == 0, dry.stderr
    assert "plan: " in dry.stderr and "GiB per GPU of 80 (FSDP2 full_shard over 8)" in dry.stderr
    assert "(from the plan)" in dry.stderr
    # a hung job stops billing at 3 x the plan's hours + 1 h (no --max-runtime, no max_running_minutes)
    hours = float(re.search(r"([\d.]+) h \(from the plan\)", dry.stderr).group(1))
    limit = json.loads(dry.stdout)["JobMaxRunningTimeMinutes"]
    assert abs(limit - max(120, 3 * 60 * hours + 60)) <= 2 and f"max runtime: {limit} min" in dry.stderr
    before = len(uploads(emu))
    small = cli(home, *args[:-1], "--ecs-spec", "ecs.gn6v-c8g1.16xlarge")
    line = one_line_refusal(small)
    assert "more than the 16 GiB" in line and "--no-plan" in line and len(uploads(emu)) == before
    anyway = cli(home, *args, "--ecs-spec", "ecs.gn6v-c8g1.16xlarge", "--no-plan")
    assert anyway.returncode == 0, anyway.stderr
    assert "plan: " not in anyway.stderr
