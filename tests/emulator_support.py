"""The PAI emulator as tests use it: a real `pai-distil emulator start` process on a loopback port,
and a pai-distil home configured for it. The SDK clients talk to it over HTTP, unmocked."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import stop_process

ACCESS_KEY_ID = "LTAI-emulator-test"
ACCESS_KEY_SECRET = "emu-secret-7d1f5b9e2c4a-do-not-print"  # tests scan every output for this
BUCKET = "distil-test"
CLI = [sys.executable, "-m", "pai_distil"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningEmulator:
    url: str
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen

    def counters(self) -> dict[str, int]:
        """The emulator's OSS counters, asked as every OSS request is: signed (V1) with the test AccessKey."""
        import base64
        import hashlib
        import hmac
        from email.utils import formatdate

        from pai_distil.emulator.oss import COUNTERS

        date = formatdate(usegmt=True)
        digest = hmac.new(ACCESS_KEY_SECRET.encode(), f"GET\n\n\n{date}\n{COUNTERS}".encode(), hashlib.sha1).digest()
        headers = {"Date": date, "Authorization": f"OSS {ACCESS_KEY_ID}:{base64.b64encode(digest).decode()}"}
        r = httpx.get(f"{self.url}{COUNTERS}", headers=headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def start_emulator(data_dir: Path, port: int | None = None, env_extra: dict | None = None, executor: str = "process"):
    port = port or free_port()
    log = data_dir.parent / f"{data_dir.name}-emulator.log"
    env = {**os.environ, "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
           "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET, "PAI_DISTIL_EMULATOR_GRACE_S": "20",
           **(env_extra or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([*CLI, "emulator", "start", "--port", str(port), "--data-dir", str(data_dir),
                                 "--executor", executor],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/_emulator/oss/counters", timeout=2)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    try:
        yield RunningEmulator(url, port, data_dir, log, proc)
    finally:
        stop_process(proc)


def client_env(home: Path, secret: str = ACCESS_KEY_SECRET) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "PAI_DISTIL_"))}
    env.update({"PAI_DISTIL_HOME": str(home), "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secret})
    return env


def configure(home: Path, emu: RunningEmulator, **extra: str) -> None:
    """`pai-distil config set` for the emulator, and the bucket created with oss2."""
    import oss2

    settings = {"oss_bucket": BUCKET, "oss_endpoint": emu.url, "dlc_endpoint": emu.url, "dsw_endpoint": emu.url,
                "ecs_spec": "ecs.g6.xlarge", "workspace_id": "ws-test", "image": "pai-distil-job:cpu",
                "log_delay_s": "1", **extra}  # the emulator's logs are readable at once
    proc = subprocess.run([*CLI, "config", "set", *(f"{k}={v}" for k, v in settings.items())],
                          env=client_env(home), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, BUCKET).create_bucket()


def cli(home: Path, *args, secret: str = ACCESS_KEY_SECRET, timeout: float = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], env={**client_env(home, secret), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def dlc_client(emu: RunningEmulator, secret: str = ACCESS_KEY_SECRET):
    from alibabacloud_credentials.client import Client as Credentials
    from alibabacloud_credentials.models import Config as CredentialConfig
    from alibabacloud_pai_dlc20201203.client import Client
    from alibabacloud_tea_openapi.models import Config

    cred = Credentials(CredentialConfig(type="access_key", access_key_id=ACCESS_KEY_ID, access_key_secret=secret))
    return Client(Config(credential=cred, endpoint=emu.endpoint(), protocol="http", region_id="cn-hangzhou"))


def dlc_run(emu: RunningEmulator, home: Path, command: str, run_id: str, pods: int = 1) -> tuple[str, Path, Path]:
    """A pai run around a DLC job created directly (no stage, no upload): its spec, `dlc-job.json` and
    registry record, as `PaiBackend.start` leaves them for the supervisor; returns (job id, run dir,
    registry path). The job's output mount is `/mnt/out`."""
    from alibabacloud_pai_dlc20201203 import models as m

    from pai_distil.backends import pai
    from pai_distil.cloud.pai.config import PaiConfig
    from pai_distil.core.config import JobSpec
    from pai_distil.run.registry import REMOTE_JOB, Registry

    os.environ["PAI_DISTIL_HOME"] = str(home)  # the registry and run dirs of this home, read in this process
    try:
        registry = Registry()
        work = home / "work" / f"{run_id}-work"
        spec = JobSpec(run_id=run_id, stage="generate", command=["true"], config={}, output=str(work / "output"),
                       checkpoint_dir=str(work / "checkpoints"))
        directory = home / "runs" / run_id
        directory.mkdir(parents=True)
        (directory / "spec.json").write_text(spec.model_dump_json())
        (directory / REMOTE_JOB).touch()
        cfg = PaiConfig.model_validate({"oss_bucket": BUCKET, "oss_endpoint": emu.url, "dlc_endpoint": emu.url,
                                        "ecs_spec": "ecs.g6.xlarge", "log_delay_s": 1})
        prefix = pai.output_prefix(cfg, work.name)
        request = m.CreateJobRequest(
            display_name=run_id, job_type="PyTorchJob", user_command=command,
            job_specs=[m.JobSpec(type="Worker", image="any:latest", pod_count=pods, ecs_spec="ecs.g6.xlarge")],
            data_sources=[m.CreateJobRequestDataSources(uri=f"oss://{BUCKET}/{prefix}/", mount_path="/mnt/out",
                                                        mount_access="RW")])
        job_id = dlc_client(emu).create_job(request).body.job_id
        pai.write_job_info(directory, {"job_id": job_id, "config": cfg.model_dump(mode="json"), "output_prefix": prefix,
                                       "checkpoint_prefix": prefix, "download": False, "max_restarts": 0,
                                       "attempts": [{"job_id": job_id, "status": "Submitted", "reason": ""}]})
        registry.create(run_id, "generate", "pai", "key", str(work), spec.output, str(directory / "job.log"))
    finally:
        del os.environ["PAI_DISTIL_HOME"]
    return job_id, directory, registry.path


WRITE_MANIFEST = "echo '{\"files\": []}' > /mnt/out/manifest.json"
