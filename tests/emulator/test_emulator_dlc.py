"""The emulator's DLC API with the real alibabacloud-pai-dlc20201203 client: jobs run, log, fail,
stop; ListJobs filters by tag; a submit is idempotent per run id; wrong keys get DLC's JSON error."""

from __future__ import annotations

import json
import time

import httpx
import oss2
import pytest
from alibabacloud_pai_dlc20201203 import models as m
from alibabacloud_tea_openapi.exceptions import ClientException
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, dlc_client, start_emulator

from pai_distil.cloud.pai import dlc


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), e.url, "jobs-data")
        b.create_bucket()
        b.put_object("in/numbers.txt", b"1\n2\n3\n")
        yield e


def job_request(command: str, name: str, pods: int = 1, tags: dict | None = None) -> m.CreateJobRequest:
    return m.CreateJobRequest(
        display_name=name, job_type="PyTorchJob", user_command=command,
        job_specs=[m.JobSpec(type="Worker", image="any:latest", pod_count=pods, ecs_spec="ecs.g6.xlarge")],
        data_sources=[m.CreateJobRequestDataSources(uri="oss://jobs-data/in/", mount_path="/mnt/data/in", mount_access="RO"),
                      m.CreateJobRequestDataSources(uri="oss://jobs-data/out/", mount_path="/mnt/data/out", mount_access="RW")],
        envs={"GREETING": "hello from /mnt/data/in"}, settings=m.JobSettings(tags=tags or {}))


def wait_for(client, job_id, states=dlc.TERMINAL, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id, m.GetJobRequest()).body
        if job.status in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status}")


def test_job_runs_pods_with_dlc_env_and_writes_back_to_oss(emu):
    client = dlc_client(emu)
    command = ('echo "rank $RANK of $WORLD_SIZE at $MASTER_ADDR:$MASTER_PORT"; echo "$GREETING"; '
               'cat /mnt/data/in/numbers.txt | wc -l > /mnt/data/out/count-$RANK.txt')
    job_id = client.create_job(job_request(command, "two-pods", pods=2)).body.job_id
    job = wait_for(client, job_id)
    assert job.status == "Succeeded", job.reason_message
    assert [p.status for p in job.pods] == ["Succeeded", "Succeeded"]
    logs = [client.get_pod_logs(job_id, p.pod_id, m.GetPodLogsRequest()).body.logs for p in job.pods]
    assert logs[0][0].startswith("rank 0 of 2 at 127.0.0.1:") and logs[1][0].startswith("rank 1 of 2")
    assert logs[0][1].startswith("hello from /") and "/mnt/data/in" not in logs[0][1]  # the mount, mapped
    b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, "jobs-data")
    assert b.get_object("out/count-0.txt").read().strip() == b"3"
    assert b.get_object("out/count-1.txt").read().strip() == b"3"
    events = client.get_job_events(job_id, m.GetJobEventsRequest()).body.events
    assert any("Queuing" in e or "queuing" in e for e in events) and "succeeded" in events[-1]


def test_failed_job_reports_reason_and_stop_ends_a_running_job(emu):
    client = dlc_client(emu)
    failed = client.create_job(job_request("echo working; echo 'disk full' >&2; exit 3", "fails")).body.job_id
    job = wait_for(client, failed)
    assert job.status == "Failed" and "exited with code 3" in job.reason_message and "disk full" in job.reason_message

    running = client.create_job(job_request("trap 'echo got SIGTERM; exit 143' TERM; echo up; "
                                            "while true; do sleep 0.2; done", "stops")).body.job_id
    wait_for(client, running, ("Running",))
    deadline = time.monotonic() + 30
    while not client.get_pod_logs(running, f"{running}-worker-0", m.GetPodLogsRequest()).body.logs:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    client.stop_job(running)
    job = wait_for(client, running)
    assert job.status == "Stopped"
    assert "got SIGTERM" in client.get_pod_logs(running, f"{running}-worker-0", m.GetPodLogsRequest()).body.logs


def test_submit_is_idempotent_per_run_id_and_list_filters_by_tag(emu):
    client = dlc_client(emu)
    request = job_request("echo once", "idempotent", tags={dlc.RUN_TAG: "run-abc"})
    first, created = dlc.submit(client, request, "run-abc")
    second, created_again = dlc.submit(client, request, "run-abc")
    assert created and not created_again and first == second
    listed = client.list_jobs(m.ListJobsRequest(tags={dlc.RUN_TAG: "run-abc"})).body
    assert listed.total_count == 1 and listed.jobs[0].job_id == first
    assert client.list_jobs(m.ListJobsRequest(tags={dlc.RUN_TAG: "other"})).body.total_count == 0


def test_wrong_secret_gets_dlc_json_error(emu):
    with pytest.raises(ClientException) as err:
        dlc_client(emu, secret="wrong").list_jobs(m.ListJobsRequest())
    assert err.value.code == "SignatureDoesNotMatch" and err.value.status_code == 400
    assert err.value.request_id and err.value.request_id != "None"
    raw = httpx.get(f"{emu.url}/api/v1/jobs", headers={"Authorization": "ACS3-HMAC-SHA256 Credential="
                                                        f"{ACCESS_KEY_ID},SignedHeaders=host,Signature=00"})
    body = raw.json()
    assert raw.status_code == 400 and set(body) >= {"Code", "Message", "RequestId", "HostId"}
    assert json.dumps(body).find(ACCESS_KEY_SECRET) == -1
    with pytest.raises(ClientException) as missing:
        dlc_client(emu).get_job("dlc-does-not-exist", m.GetJobRequest())
    assert missing.value.status_code == 404
    with pytest.raises(ClientException) as invalid:
        dlc_client(emu).create_job(m.CreateJobRequest(display_name="x", job_type="PyTorchJob", user_command="true"))
    assert invalid.value.code == "InvalidParameter" and "JobSpecs" in invalid.value.message


def test_state_survives_a_restart_and_unfinished_jobs_run_again(tmp_path):
    from emulator_support import free_port

    port, data = free_port(), tmp_path / "data"
    with start_emulator(data, port=port) as first:
        b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), first.url, "jobs-data")
        b.create_bucket()
        b.put_object("in/numbers.txt", b"1\n2\n")
        client = dlc_client(first)
        done = client.create_job(job_request("echo finished", "done")).body.job_id
        wait_for(client, done)
        # a job that needs two lives: the first one is cut short by the emulator going away
        again = client.create_job(job_request(
            "if [ -f /mnt/data/out/first-life ]; then echo second life; else touch /mnt/data/out/first-life; "
            "echo first life; sleep 600; fi", "restarted")).body.job_id
        wait_for(client, again, ("Running",))
        deadline = time.monotonic() + 30
        while not b.object_exists("out/first-life"):  # the mount writes through to OSS within seconds
            assert time.monotonic() < deadline
            time.sleep(0.2)
        first.proc.kill()  # no clean shutdown: the state on disk is all that is left
        first.proc.wait()
    with start_emulator(data, port=port) as second:
        client = dlc_client(second)
        assert client.get_job(done, m.GetJobRequest()).body.status == "Succeeded"
        b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), second.url, "jobs-data")
        assert b.get_object("in/numbers.txt").read() == b"1\n2\n"
        job = wait_for(client, again)
        logs = client.get_pod_logs(again, f"{again}-worker-0", m.GetPodLogsRequest()).body.logs
        assert job.status == "Succeeded" and logs[-1] == "second life", logs


def test_list_ecs_specs_gives_gpus_drivers_and_spot_stock(emu):
    specs = dlc_client(emu).list_ecs_specs(m.ListEcsSpecsRequest(instance_types="ecs.gn7i-c32g1.32xlarge")).body
    [a10] = specs.ecs_specs
    assert (a10.gpu, a10.gpu_type, a10.gpu_memory, a10.cpu) == (4, "NVIDIA A10", 24, 128)
    assert a10.supported_gpudrivers and a10.default_gpudriver in a10.supported_gpudrivers
    assert a10.spot_stock_status == "WithStock"


def test_create_job_checks_spot_and_resource_fields_as_dlc_documents(emu):
    client = dlc_client(emu)

    def refused(**changes) -> str:
        request = job_request("true", "refused")
        for k, v in changes.items():
            setattr(request.job_specs[0], k, v)
        with pytest.raises(ClientException) as err:
            client.create_job(request)
        assert err.value.code == "InvalidParameter"
        return err.value.message

    assert "SpotSpec" in refused(use_spot_instance=True)
    assert "SpotAsPriceGo" in refused(use_spot_instance=True, spot_spec=m.SpotSpec(spot_strategy="SpotAsPriceGo",
                                                                                    spot_discount_limit=0.5))
    both = m.SpotSpec(spot_strategy="SpotWithPriceLimit", spot_discount_limit=0.5, spot_price_limit=0.4)
    assert "exactly one of SpotDiscountLimit and SpotPriceLimit" in refused(use_spot_instance=True, spot_spec=both)
    assert "exactly one" in refused(use_spot_instance=True, spot_spec=m.SpotSpec(spot_strategy="SpotWithPriceLimit"))
    assert "SpotDiscountLimit" in refused(use_spot_instance=True, spot_spec=m.SpotSpec(
        spot_strategy="SpotWithPriceLimit", spot_discount_limit=1.5))
    assert "ResourceConfig.GPU" in refused(resource_config=m.ResourceConfig(gpu="eight"))
    assert "ResourceConfig.Memory" in refused(resource_config=m.ResourceConfig(memory="64GB"))
    assert "ResourceConfig.CPU" in refused(resource_config=m.ResourceConfig(cpu="lots"))
    assert "EcsSpec" in refused(ecs_spec=None)

    # as strict as DLC: the ECS type decides the pod's shape, and the body has a size limit
    assert "contradicts EcsSpec ecs.g6.xlarge, which has 0 GPU(s)" in refused(resource_config=m.ResourceConfig(gpu="8"))
    assert "not an instance type" in refused(ecs_spec="ecs.gn99-imaginary")
    assert "more than the 16 GiB" in refused(resource_config=m.ResourceConfig(memory="512Gi"))
    huge = job_request("true", "huge")
    huge.envs = {f"PAD_{i}": "x" * 1000 for i in range(70)}
    with pytest.raises(ClientException) as err:
        client.create_job(huge)
    assert err.value.code == "InvalidParameter" and "at most 65536" in err.value.message

    spot = job_request('echo "procs $NPROC_PER_NODE"', "spot-ok")
    spot.job_specs[0].ecs_spec = "ecs.gn7i-c32g1.32xlarge"  # four A10s
    spot.job_specs[0].use_spot_instance = True
    spot.job_specs[0].spot_spec = m.SpotSpec(spot_strategy="SpotWithPriceLimit", spot_discount_limit=0.8)
    spot.job_specs[0].resource_config = m.ResourceConfig(cpu="8", gpu="4", memory="30Gi", shared_memory="8Gi")
    job_id = client.create_job(spot).body.job_id
    assert wait_for(client, job_id).status == "Succeeded"
    # DLC sets NPROC_PER_NODE to the ECS type's GPU count when the job does not
    assert client.get_pod_logs(job_id, f"{job_id}-worker-0", m.GetPodLogsRequest()).body.logs == ["procs 4"]


def test_pod_logs_come_in_pages_of_max_lines_within_a_time_window(emu):
    client = dlc_client(emu)
    job_id = client.create_job(job_request("seq 1 2500; sleep 1.2; echo after", "chatty")).body.job_id
    job = wait_for(client, job_id)
    pod = f"{job_id}-worker-0"
    first = client.get_pod_logs(job_id, pod, m.GetPodLogsRequest()).body.logs
    assert len(first) == 2000 and first[0] == "1" and first[-1] == "2000"  # MaxLines defaults to 2,000
    everything = client.get_pod_logs(job_id, pod, m.GetPodLogsRequest(max_lines=5000)).body.logs
    assert everything == [str(i) for i in range(1, 2501)] + ["after"]
    # a window of whole seconds: the last line came more than a second after the first ones
    created = dlc.parse_iso(job.gmt_create_time)
    late = client.get_pod_logs(job_id, pod, m.GetPodLogsRequest(start_time=dlc.iso(created + 60))).body.logs
    assert late == []
    with pytest.raises(ClientException) as err:
        client.get_pod_logs(job_id, pod, m.GetPodLogsRequest(start_time="yesterday"))
    assert err.value.code == "InvalidParameter" and "StartTime" in err.value.message
    # read in windows that never fill a page, every line comes once
    cursor = dlc.LogCursor(since=created)
    lines, complete = dlc.new_pod_lines(client, job_id, pod, cursor, time.time() + 2)
    assert complete and lines == everything


def test_failed_by_infrastructure_tells_machines_from_code():
    def job(status, code="", message=""):
        return m.GetJobResponseBody(status=status, reason_code=code, reason_message=message)

    assert dlc.failed_by_infrastructure(job("Failed", "JobPreempted", "pod x: the spot instance was reclaimed"))
    assert dlc.failed_by_infrastructure(job("Failed", "NodeLost"))
    assert dlc.failed_by_infrastructure(job("Failed", "", "node lost while running"))
    assert not dlc.failed_by_infrastructure(job("Failed", "JobFailed", "pod x exited with code 1: preempted?"))
    assert not dlc.failed_by_infrastructure(job("Failed", "JobMaxRunningTimeExceeded"))
    assert not dlc.failed_by_infrastructure(job("Stopped", "JobPreempted"))
