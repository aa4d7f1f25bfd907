"""DLC pods as Docker containers of the job's image (the emulator's `docker` executor)."""

from __future__ import annotations

import oss2
from alibabacloud_pai_dlc20201203 import models as m
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, dlc_client, start_emulator
from test_emulator_dlc import job_request, wait_for


def test_pods_run_in_containers_with_oss_mounts(cpu_image, tmp_path):  # noqa: F811
    with start_emulator(tmp_path / "data", executor="docker") as emu:
        b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, "jobs-data")
        b.create_bucket()
        b.put_object("in/numbers.txt", b"4\n5\n")
        client = dlc_client(emu)
        request = job_request('python -c "import os, sys; print(sys.version_info[:2], os.getuid()); '
                              "open('/mnt/data/out/rank-' + os.environ['RANK'], 'w').write("
                              "open('/mnt/data/in/numbers.txt').read())\"; "
                              "touch /mnt/data/in/not-allowed 2>/dev/null || echo read-only", "in-docker", pods=2)
        request.job_specs[0].image = cpu_image
        job_id = client.create_job(request).body.job_id
        job = wait_for(client, job_id, timeout=300)
        assert job.status == "Succeeded", job.reason_message
        logs = client.get_pod_logs(job_id, f"{job_id}-worker-1", m.GetPodLogsRequest()).body.logs
        assert logs[0].startswith("(3, 11)") and logs[-1] == "read-only", logs
        assert b.get_object("out/rank-0").read() == b.get_object("out/rank-1").read() == b"4\n5\n"
        events = client.get_job_events(job_id, m.GetJobEventsRequest()).body.events
        assert any(f"containers of {cpu_image}" in e for e in events)
