"""PAI-DLC jobs through alibabacloud-pai-dlc20201203: a JobSpec becomes a CreateJob request.

The request is built from the SDK's own models, so field names are DLC's: a PyTorchJob with
Worker pods (one per node; the first is RANK 0), the image, EcsSpec on public resources or
ResourceConfig on a quota, spot options, OSS data sources (inputs read-only; output and
checkpoints read-write), Envs (the job contract, never a secret), UserVpc, Priority, and the
production settings: JobMaxRunningTimeMinutes (always: a hung job stops billing), Accessibility
PRIVATE, CredentialConfig (a RAM role, the way to give a job keys), and Settings with the run-id
Tags (which make a submit idempotent), TerminationGracePeriodSeconds (time to save a checkpoint),
the GPU Driver pre-flight chose, and RDMA for a multi-node job on a quota (Lingjun).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Iterator

from pai_distil.core.errors import UserError
from pai_distil.core.config import JobSpec
from pai_distil.cloud.pai.config import PaiConfig

RUN_TAG = "pai-distil-run-id"
STAGE_TAG = "pai-distil-stage"
ATTEMPT_TAG = "pai-distil-attempt"
DEFAULT_MAX_RUNNING_MINUTES = 3 * 24 * 60  # JobMaxRunningTimeMinutes when neither --max-runtime nor the config sets it
QUOTA_CPU_PER_GPU, QUOTA_MEMORY_GIB_PER_GPU = 8, 64  # a quota job's CPU and memory when not given
GPU_FAMILIES = ("ecs.gn", "ecs.gu", "ecs.ebmgn", "ecs.sgn", "ecs.vgn", "ecs.ebmgu")  # GPU instance families
DEFAULT_SHM_GB = 8  # /dev/shm of a GPU pod when not given: NCCL and data loaders need more than a container's 64 MiB
MOUNT_ROOT = "/mnt/pai-distil"
TERMINAL = ("Succeeded", "Failed", "Stopped")
SECRET_MARK = "***"
INFRA_REASONS = ("JobPreempted", "PodPreempted", "SpotInstanceReclaimed", "InstanceReclaimed", "NodeLost",
                 "NodeFailure", "NodeNotReady", "PodEvicted")  # DLC failed the machines, not the job's code
INFRA_WORDS = re.compile(r"preempt|reclaim|evict|node (?:lost|failure|not ready)", re.IGNORECASE)
LOG_PAGE = 2000  # GetPodLogs' MaxLines default
MAX_LINES_CEILING = 128_000  # the most lines one GetPodLogs call is asked for (one second of a very chatty job)


@dataclass
class Mount:
    uri: str
    path: str
    writable: bool


def client(cfg: PaiConfig):
    from alibabacloud_pai_dlc20201203.client import Client
    from alibabacloud_tea_openapi.models import Config

    from pai_distil.cloud.pai.credentials import chain

    protocol, endpoint = cfg.pop_endpoint("dlc")
    return Client(Config(credential=chain(), endpoint=endpoint, protocol=protocol, region_id=cfg.region,
                         connect_timeout=10000, read_timeout=60000))


def explain(e: Exception, what: str) -> UserError:
    """One line for a DLC API failure; a refused AccessKey says what to fix."""
    code = getattr(e, "code", "") or ""
    message = str(getattr(e, "message", "") or e).splitlines()[0][:300]
    if code.startswith(("SignatureDoesNotMatch", "InvalidAccessKeyId", "IncompleteSignature", "InvalidSecurityToken")):
        return UserError(f"PAI-DLC refused the credentials ({code}) while {what}: check "
                         "ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET (or your profile)")
    if not code:
        return UserError(f"cannot reach PAI-DLC while {what}: {message}; check `dlc_endpoint` and the network")
    return UserError(f"PAI-DLC error {code} while {what}: {message}")


def create_job_request(spec: JobSpec, cfg: PaiConfig, image: str, mounts: list[Mount], env: dict[str, str],
                       attempt: int = 1, driver: str | None = None, node_gpus: int | None = None,
                       max_running_minutes: int | None = None):
    """The CreateJob request for one job, as the SDK's request model.

    `driver` is the GPU driver pre-flight chose (Settings.Driver), `node_gpus` the GPU count ListEcsSpecs
    gave for the ECS type (None when unknown), `max_running_minutes` the user's `--max-runtime`.
    """
    from alibabacloud_pai_dlc20201203 import models as m

    gpus = pod_gpus(spec, cfg, node_gpus)
    if gpus:  # the job fails in one line where its torch cannot use them, never trains on the CPU
        env = {**env, "PAI_DISTIL_GPUS": str(gpus)}
    worker = m.JobSpec(type="Worker", image=image, pod_count=spec.nodes,
                       resource_config=resource_config(spec, cfg, node_gpus))
    if not cfg.quota_id:
        worker.ecs_spec = spec.resources.instance_type or cfg.ecs_spec
    if cfg.spot:
        limit = cfg.spot_limits()
        worker.use_spot_instance = True
        worker.spot_spec = m.SpotSpec(spot_strategy=cfg.spot_strategy, spot_discount_limit=limit.get("discount"),
                                      spot_price_limit=limit.get("price"))
    tags = {RUN_TAG: spec.run_id, STAGE_TAG: spec.stage} | ({ATTEMPT_TAG: str(attempt)} if attempt > 1 else {})
    settings = m.JobSettings(tags=tags, termination_grace_period_seconds=cfg.termination_grace_s, driver=driver)
    if cfg.quota_id and spec.nodes > 1:  # Lingjun nodes talk over RDMA; DLC wires it only when asked
        settings.enable_rdma, settings.allocate_all_rdmadevices = True, True
    request = m.CreateJobRequest(
        display_name=spec.run_id if attempt == 1 else f"{spec.run_id}-attempt{attempt}", job_type="PyTorchJob",
        job_specs=[worker], user_command=" ".join(_command(spec)),
        data_sources=[m.CreateJobRequestDataSources(uri=x.uri, mount_path=x.path, mount_access="RW" if x.writable else "RO")
                      for x in mounts],
        envs=env, workspace_id=cfg.workspace_id, resource_id=cfg.quota_id, priority=cfg.priority,
        job_max_running_time_minutes=max_running_minutes or cfg.max_running_minutes or DEFAULT_MAX_RUNNING_MINUTES,
        settings=settings, accessibility=cfg.accessibility,
    )
    if cfg.ram_role_arn:
        request.credential_config = m.CredentialConfig(enable_credential_inject=True, credential_config_items=[
            m.CredentialConfigItem(type="Role", roles=[m.CredentialRole(role_arn=cfg.ram_role_arn, role_type="service")])])
    if cfg.vpc_id:
        request.user_vpc = m.CreateJobRequestUserVpc(vpc_id=cfg.vpc_id, switch_id=cfg.switch_id,
                                                     security_group_id=cfg.security_group_id)
    return request


def resource_config(spec: JobSpec, cfg: PaiConfig, node_gpus: int | None = None):
    """A pod's ResourceConfig (CPU, GPU, Memory, SharedMemory). On a quota every field is set (CPU and memory
    default by GPU count); on public resources the ECS type decides CPU, memory and GPUs, and only what was
    asked for is sent, plus SharedMemory wherever the node has GPUs (a container's 64 MiB breaks NCCL)."""
    from alibabacloud_pai_dlc20201203 import models as m

    r = spec.resources
    if cfg.quota_id:
        gpu = pod_gpus(spec, cfg)  # on a quota: one GPU per process asked for
        cpu = r.cpu or max(4, QUOTA_CPU_PER_GPU * gpu)
        memory = r.memory_gb or max(16, QUOTA_MEMORY_GIB_PER_GPU * gpu)
        shm = r.shared_memory_gb or (DEFAULT_SHM_GB if gpu else None)
        return m.ResourceConfig(cpu=_amount(cpu), gpu=str(gpu), memory=_gib(memory), shared_memory=_gib(shm))
    shm = r.shared_memory_gb or (DEFAULT_SHM_GB if pod_gpus(spec, cfg, node_gpus) else None)
    if not (r.cpu or r.memory_gb or r.gpu or shm):
        return None
    return m.ResourceConfig(cpu=_amount(r.cpu), gpu=str(r.gpu) if r.gpu else None, memory=_gib(r.memory_gb),
                            shared_memory=_gib(shm))


def pod_gpus(spec: JobSpec, cfg: PaiConfig, node_gpus: int | None = None) -> int:
    """GPUs one pod gets: asked for (a quota, or `resources.gpu`), else the ECS type's (ListEcsSpecs'
    count; 1 at least for a GPU family when pre-flight did not look)."""
    r = spec.resources
    if cfg.quota_id:
        return r.gpu or (spec.procs_per_node or 0)
    if r.gpu:
        return r.gpu
    if node_gpus is not None:
        return node_gpus
    return 1 if (r.instance_type or cfg.ecs_spec or "").startswith(GPU_FAMILIES) else 0


def _amount(x: float | None) -> str | None:
    return None if x is None else str(int(x)) if float(x).is_integer() else str(x)


def _gib(x: float | None) -> str | None:
    return None if x is None else f"{_amount(x)}Gi"


def _command(spec: JobSpec) -> list[str]:
    """The job command inside the image (`python -m pai_distil_jobs …`), quoted for DLC's shell."""
    import shlex

    return [shlex.quote(c) for c in spec.command]


def request_body(request) -> dict:
    """The JSON body the SDK sends for a CreateJob request (what `--dry-run` prints)."""
    body = request.to_map()
    return {k: v for k, v in body.items() if v is not None}


def find_job(dlc, run_id: str):
    """The DLC job already submitted for a run, if any (by its run-id tag)."""
    from alibabacloud_pai_dlc20201203 import models as m

    try:
        resp = dlc.list_jobs(m.ListJobsRequest(tags={RUN_TAG: run_id}, page_size=10))
    except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
        raise explain(e, "looking for an earlier submission") from None
    jobs = [j for j in (resp.body.jobs or []) if j.status not in ("Failed", "Stopped")]
    return jobs[0] if jobs else None


def submit(dlc, request, run_id: str) -> tuple[str, bool]:
    """Create the job unless this run already has one; returns (job id, created now)."""
    existing = find_job(dlc, run_id)
    if existing is not None:
        return existing.job_id, False
    try:
        return dlc.create_job(request).body.job_id, True
    except Exception as e:  # noqa: BLE001
        raise explain(e, "creating the DLC job") from None


def get_job(dlc, job_id: str):
    try:
        return dlc.get_job(job_id, _get_job_request()).body
    except Exception as e:  # noqa: BLE001
        raise explain(e, f"reading job {job_id}") from None


def _get_job_request():
    from alibabacloud_pai_dlc20201203 import models as m

    return m.GetJobRequest()


def pod_logs(dlc, job_id: str, pod_id: str, start: float | None = None, end: float | None = None,
             max_lines: int | None = None) -> list[str]:
    """One GetPodLogs call: the pod's lines logged in [start, end) (whole seconds), at most `max_lines`."""
    from alibabacloud_pai_dlc20201203 import models as m

    request = m.GetPodLogsRequest(start_time=iso(start) if start is not None else None,
                                  end_time=iso(end) if end is not None else None, max_lines=max_lines)
    try:
        return list(dlc.get_pod_logs(job_id, pod_id, request).body.logs or [])
    except Exception as e:  # noqa: BLE001
        raise explain(e, f"reading the logs of pod {pod_id}") from None


def iso(t: float) -> str:
    """DLC's time format: UTC, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_iso(text: str | None) -> float | None:
    import calendar

    if not text:
        return None
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


@dataclass
class LogCursor:
    """How far one pod's log has been read: every line logged before `since` (a whole second) was shown."""

    since: float
    warned: bool = False


def new_pod_lines(dlc, job_id: str, pod_id: str, cursor: LogCursor, until: float) -> tuple[list[str], bool]:
    """Every line of a pod logged from `cursor.since` to `until`, each once, however many there are.

    GetPodLogs returns at most MaxLines lines (2,000 by default) of a time window, with no offset, so the
    log is read in windows of whole seconds that never fill a page: a full page halves the window until
    it is one second, and then asks for more lines. Returns (lines, complete); `complete` is False when
    one second held more than MAX_LINES_CEILING lines and some may be missing.
    """
    out: list[str] = []
    complete = True
    start, stop = int(cursor.since), int(until)
    while start < stop:
        end, page = stop, LOG_PAGE
        while True:
            lines = pod_logs(dlc, job_id, pod_id, start, end, page)
            if len(lines) < page:
                break
            if end - start > 1:
                end = start + (end - start) // 2
            elif page < MAX_LINES_CEILING:
                page *= 4
            else:
                complete = False
                break
        out += lines
        start = end
    cursor.since = float(start)
    return out, complete


def failed_by_infrastructure(job) -> bool:
    """Whether DLC failed the job for its machines (spot reclaim, preemption, node loss), not for its code."""
    if job.status != "Failed":
        return False
    code = job.reason_code or ""
    return code in INFRA_REASONS or (not code and bool(INFRA_WORDS.search(job.reason_message or "")))


def stop_job(dlc, job_id: str) -> None:
    try:
        dlc.stop_job(job_id)
    except Exception as e:  # noqa: BLE001
        raise explain(e, f"stopping job {job_id}") from None


def preempt_pod(dlc, job_id: str, pod_id: str, fail: bool = False) -> dict:
    """The emulator's preemption route (`/_emulator/...`, no DLC equivalent), signed by the SDK's call_api."""
    from alibabacloud_tea_openapi import utils_models
    from darabonba.runtime import RuntimeOptions

    params = utils_models.Params(action="PreemptPod", version="2020-12-03", protocol="HTTPS",
                                 pathname=f"/_emulator/dlc/jobs/{job_id}/pods/{pod_id}/preempt", method="POST",
                                 auth_type="AK", style="ROA", req_body_type="json", body_type="json")
    request = utils_models.OpenApiRequest(query={"Fail": "true"} if fail else {})
    return dlc.call_api(params, request, RuntimeOptions())["body"]


def backoff(start: float = 1.0, factor: float = 1.5, ceiling: float = 10.0) -> Iterator[float]:
    """Poll intervals: quick at first, then no faster than every `ceiling` seconds."""
    delay = start
    while True:
        yield delay
        delay = min(ceiling, delay * factor)


def wait(dlc, job_id: str, until=TERMINAL, timeout_s: float = 3600.0):
    """Poll GetJob with backoff until the job is in one of `until`; returns its last body."""
    deadline = time.monotonic() + timeout_s
    for delay in backoff(0.5, 1.5, 5.0):
        job = get_job(dlc, job_id)
        if job.status in until or time.monotonic() > deadline:
            return job
        time.sleep(delay)
