"""The PAI-DLC API (`/api/v1/jobs` ...), as alibabacloud-pai-dlc20201203 calls it.

CreateJob, GetJob, ListJobs (filters: DisplayName, Status, Tags, paging), StopJob, GetPodLogs,
GetJobEvents. Jobs move through DLC's states (Creating, Queuing, Dequeued, Running, then
Succeeded, Failed, or Stopping and Stopped) and really run: see `dlc_runner`. Two routes under
`/_emulator/` are the emulator's own (no DLC equivalent): preempt a pod, to try spot behaviour.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from fastapi import APIRouter, Request

from . import dlc_runner
from .ecs_specs import SPECS
from .pop import PopError, body_json, paging, pop_router, request_id, stored

TERMINAL = ("Succeeded", "Failed", "Stopped")
JOB_TYPES = ("PyTorchJob", "TFJob", "XGBoostJob", "MPIJob", "RayJob")
POD_TYPES = ("Master", "Worker", "Chief", "PS", "Evaluator", "Head")
STORE = "dlc-jobs"
CPU = re.compile(r"\d+(\.\d+)?")
SIZE = re.compile(r"\d+(\.\d+)?(Mi|Gi|Ti)")
MAX_LINES = 2000  # GetPodLogs' default MaxLines
LOG_DAYS = 7  # GetPodLogs' default StartTime: this many days ago
MAX_BODY = 65_536  # CreateJob's request size limit, in bytes
MAX_PODS = 128  # pods of one job: each runs as a process or container on this machine


def iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def validate_create(body: dict) -> None:
    """The checks DLC makes before it accepts a job, with its error codes."""
    def bad(field: str, why: str):
        raise PopError(400, "InvalidParameter", f"{field}: {why}")

    if not isinstance(body.get("DisplayName"), str) or not body["DisplayName"]:
        bad("DisplayName", "is required, a string")
    if body.get("JobType") not in JOB_TYPES:
        bad("JobType", f"must be one of {', '.join(JOB_TYPES)}")
    specs = body.get("JobSpecs")
    if not isinstance(specs, list) or not specs:
        bad("JobSpecs", "at least one JobSpec is required")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            bad(f"JobSpecs[{i}]", "must be an object (Type, PodCount, Image, ...)")
        if spec.get("Type") not in POD_TYPES:
            bad(f"JobSpecs[{i}].Type", f"must be one of {', '.join(POD_TYPES)}")
        count = spec.get("PodCount")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_PODS:
            bad(f"JobSpecs[{i}].PodCount", f"must be an integer from 1 to {MAX_PODS}")
        if not isinstance(spec.get("Image"), str) or not spec["Image"]:
            bad(f"JobSpecs[{i}].Image", "is required, a string")
        if spec.get("ResourceConfig") is not None:  # first: the checks against the ECS type read it
            check_resources(spec["ResourceConfig"], f"JobSpecs[{i}].ResourceConfig", bad)
        if body.get("ResourceId"):
            if not spec.get("ResourceConfig"):
                bad(f"JobSpecs[{i}].ResourceConfig", "is required on a resource quota (ResourceId)")
        elif not isinstance(spec.get("EcsSpec"), str) or not spec["EcsSpec"]:
            bad(f"JobSpecs[{i}].EcsSpec", "is required on public resources, a string (or give ResourceId, a quota)")
        else:
            check_against_type(spec, f"JobSpecs[{i}]", bad)
        if spec.get("UseSpotInstance"):
            check_spot(spec.get("SpotSpec"), f"JobSpecs[{i}].SpotSpec", bad)
        elif spec.get("SpotSpec"):
            bad(f"JobSpecs[{i}].SpotSpec", "is given but UseSpotInstance is not true")
    if sum(spec["PodCount"] for spec in specs) > MAX_PODS:
        bad("JobSpecs", f"must ask for at most {MAX_PODS} pods in all")
    if not isinstance(body.get("UserCommand"), str) or not body["UserCommand"]:
        bad("UserCommand", "is required, a string")
    check_maps(body, bad)
    sources = body.get("DataSources") or []
    if not isinstance(sources, list):
        bad("DataSources", "must be a list of {Uri, MountPath} objects")
    for i, ds in enumerate(sources):
        if not isinstance(ds, dict) or not str(ds.get("Uri", "")).startswith("oss://") \
                or not str(ds.get("MountPath", "")).startswith("/"):
            bad(f"DataSources[{i}]", "needs an oss:// Uri and an absolute MountPath")


def check_maps(body: dict, bad) -> None:
    """Fields the emulator reads later (the runner, ListJobs' filters): of the wrong type they would fail
    there, on every later request, instead of here."""
    if not isinstance(body.get("ResourceId") or "", str):
        bad("ResourceId", "must be a string (a quota id)")
    envs, settings = body.get("Envs") or {}, body.get("Settings") or {}
    if not isinstance(envs, dict) or not all(isinstance(v, (str, int, float)) for v in envs.values()):
        bad("Envs", "must be an object of names to strings")
    if not isinstance(settings, dict) or not isinstance(settings.get("Tags") or {}, dict):
        bad("Settings", "must be an object, its Tags an object of names to strings")
    limit = body.get("JobMaxRunningTimeMinutes")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        bad("JobMaxRunningTimeMinutes", "must be a whole number of minutes")


def check_against_type(spec: dict, where: str, bad) -> None:
    """On public resources the ECS type decides a pod's shape: an unknown type, or a ResourceConfig asking
    for more (or other GPUs) than the type has, is refused."""
    node = SPECS.get(spec["EcsSpec"])
    if node is None:
        bad(f"{where}.EcsSpec", f"{spec['EcsSpec']!r} is not an instance type DLC offers here (ListEcsSpecs)")
    rc = spec.get("ResourceConfig") or {}
    if rc.get("GPU") is not None and str(rc["GPU"]).isdigit() and int(rc["GPU"]) != node["Gpu"]:
        bad(f"{where}.ResourceConfig.GPU", f"{rc['GPU']} contradicts EcsSpec {spec['EcsSpec']}, which has "
                                           f"{node['Gpu']} GPU(s)")
    if rc.get("CPU") is not None and CPU.fullmatch(str(rc["CPU"])) and float(rc["CPU"]) > node["Cpu"]:
        bad(f"{where}.ResourceConfig.CPU", f"{rc['CPU']} is more than the {node['Cpu']} vCPUs of {spec['EcsSpec']}")
    memory = rc.get("Memory")
    if memory is not None and SIZE.fullmatch(str(memory)) and memory.endswith("Gi") and float(memory[:-2]) > node["Memory"]:
        bad(f"{where}.ResourceConfig.Memory", f"{memory} is more than the {node['Memory']} GiB of {spec['EcsSpec']}")


def check_resources(rc: dict, where: str, bad) -> None:
    """ResourceConfig as DLC documents it: CPU a number of vCPUs, GPU a whole number, Memory and
    SharedMemory sizes with a unit (`16Gi`), all strings."""
    if not isinstance(rc, dict):
        bad(where, "must be an object")
    for name in ("CPU", "GPU", "Memory", "SharedMemory", "GPUType"):
        if name in rc and rc[name] is not None and not isinstance(rc[name], str):
            bad(f"{where}.{name}", f"must be a string, not {type(rc[name]).__name__}")
    unknown = set(rc) - {"CPU", "GPU", "Memory", "SharedMemory", "GPUType"}
    if unknown:
        bad(f"{where}.{sorted(unknown)[0]}", "is not a ResourceConfig field")
    if rc.get("CPU") is not None and not CPU.fullmatch(rc["CPU"]):
        bad(f"{where}.CPU", f"{rc['CPU']!r} is not a number of vCPUs, e.g. 8")
    if rc.get("GPU") is not None and not rc["GPU"].isdigit():
        bad(f"{where}.GPU", f"{rc['GPU']!r} is not a whole number of GPUs")
    for name in ("Memory", "SharedMemory"):
        if rc.get(name) is not None and not SIZE.fullmatch(rc[name]):
            bad(f"{where}.{name}", f"{rc[name]!r} is not a size such as 64Gi")


def check_spot(spot, where: str, bad) -> None:
    """SpotSpec: SpotStrategy SpotWithPriceLimit with exactly one of SpotDiscountLimit / SpotPriceLimit."""
    if not isinstance(spot, dict):
        bad(where, "is required with UseSpotInstance")
    if spot.get("SpotStrategy") != "SpotWithPriceLimit":
        bad(f"{where}.SpotStrategy", f"{spot.get('SpotStrategy')!r} is not valid; valid values: SpotWithPriceLimit")
    limits = [k for k in ("SpotDiscountLimit", "SpotPriceLimit") if spot.get(k) is not None]
    if len(limits) != 1:
        bad(where, "specify exactly one of SpotDiscountLimit and SpotPriceLimit")
    value = spot[limits[0]]
    if not isinstance(value, (int, float)) or value <= 0 or (limits[0] == "SpotDiscountLimit" and value > 1):
        bad(f"{where}.{limits[0]}", f"{value!r} is out of range" + (" (0, 1]" if limits[0] == "SpotDiscountLimit" else ""))


def window(q, name: str) -> float | None:
    """A GetPodLogs time (`2020-11-08T16:00:00Z`) as seconds since the epoch."""
    import calendar

    raw = q.get(name)
    if not raw:
        return None
    try:
        return float(calendar.timegm(time.strptime(raw, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise PopError(400, "InvalidParameter", f"{name}: {raw!r} is not a time like 2020-11-08T16:00:00Z") from None


def public_view(job: dict) -> dict:
    """GetJob's body: the stored job without the emulator's private bookkeeping."""
    return {k: v for k, v in job.items() if not k.startswith("_")}


def router(emulator) -> APIRouter:
    store = emulator.store(STORE)
    r = pop_router()

    def get_job(job_id: str) -> dict:
        return stored(store, job_id, "dlc", "100400027", f"Job {job_id} does not exist or you have no permission to access it")

    @r.post("/api/v1/jobs")
    async def create_job(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise PopError(400, "InvalidParameter", f"the request body is {len(raw)} bytes; CreateJob takes at "
                                                    f"most {MAX_BODY}")
        body = body_json(raw)
        validate_create(body)
        job_id = "dlc" + uuid.uuid4().hex[:14]
        now = time.time()
        pods = []
        for spec in body["JobSpecs"]:
            for i in range(spec["PodCount"]):
                pods.append({"PodId": f"{job_id}-{spec['Type'].lower()}-{i}", "Type": spec["Type"], "Status": "Pending",
                             "RestartCount": 0})
        job = {**body, "JobId": job_id, "Status": "Creating", "ReasonCode": "", "ReasonMessage": "",
               "GmtCreateTime": iso(now), "GmtSubmittedTime": iso(now), "Pods": pods, "RestartTimes": "0",
               "_events": [f"{iso(now)} job {job_id} created"], "_created": now}
        store.put(job_id, job)
        dlc_runner.launch(emulator, job_id)
        return {"JobId": job_id, "RequestId": request_id()}

    @r.get("/api/v1/jobs/{job_id}")
    def get(job_id: str) -> dict:
        job = get_job(job_id)
        return {**public_view(job), "Pods": [_pod_view(p) for p in job["Pods"]], "RequestId": request_id()}

    @r.get("/api/v1/jobs")
    def list_jobs(request: Request) -> dict:
        q = request.query_params
        jobs = sorted(store.all(), key=lambda j: j.get("_created", 0), reverse=True)
        if q.get("DisplayName"):
            jobs = [j for j in jobs if q["DisplayName"] in j.get("DisplayName", "")]
        if q.get("Status"):
            wanted = set(q["Status"].split(","))
            jobs = [j for j in jobs if j["Status"] in wanted]
        if q.get("JobId"):
            jobs = [j for j in jobs if j["JobId"] == q["JobId"]]
        if q.get("Tags"):
            try:
                tags = json.loads(q["Tags"])
            except ValueError:
                tags = None
            if not isinstance(tags, dict):
                raise PopError(400, "InvalidParameter", "Tags: must be a JSON object") from None
            jobs = [j for j in jobs if all(((j.get("Settings") or {}).get("Tags") or {}).get(k) == v
                                           for k, v in tags.items())]
        page, size = paging(q, 50)
        chosen = jobs[(page - 1) * size: page * size]
        return {"Jobs": [{**public_view(j), "Pods": [_pod_view(p) for p in j["Pods"]]} for j in chosen],
                "TotalCount": len(jobs), "RequestId": request_id()}

    @r.post("/api/v1/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict:
        job = get_job(job_id)
        if job["Status"] not in TERMINAL:
            dlc_runner.stop(emulator, job_id)
        return {"JobId": job_id, "RequestId": request_id()}

    @r.get("/api/v1/jobs/{job_id}/pods/{pod_id}/logs")
    def pod_logs(job_id: str, pod_id: str, request: Request) -> dict:
        job = get_job(job_id)
        if pod_id not in {p["PodId"] for p in job["Pods"]}:
            raise PopError(404, "100400028", f"Pod {pod_id} of job {job_id} does not exist")
        q = request.query_params
        raw = q.get("MaxLines") or str(MAX_LINES)
        if not raw.isdigit() or int(raw) < 1:
            raise PopError(400, "InvalidParameter", f"MaxLines: {raw!r} is not a positive integer")
        start = window(q, "StartTime")
        end = window(q, "EndTime")
        start = time.time() - LOG_DAYS * 86400 if start is None else start
        end = time.time() + 1 if end is None else end
        lines = [line for t, line in dlc_runner.pod_log_timed(emulator, job_id, pod_id) if start <= t < end]
        return {"JobId": job_id, "PodId": pod_id, "Logs": lines[:int(raw)], "RequestId": request_id()}

    @r.get("/api/v1/jobs/{job_id}/events")
    def events(job_id: str) -> dict:
        return {"JobId": job_id, "Events": get_job(job_id).get("_events", []), "RequestId": request_id()}

    @r.post("/_emulator/dlc/jobs/{job_id}/pods/{pod_id}/preempt")
    def preempt(job_id: str, pod_id: str, request: Request) -> dict:
        """Reclaim a pod as a spot instance would be: SIGTERM, then, on a quota (ResourceId), DLC restarts
        the pods; on general-purpose resources (an EcsSpec), or with `Fail=true`, DLC fails the job
        (ReasonCode JobPreempted) and the client must submit it again."""
        job = get_job(job_id)
        if job["Status"] != "Running":
            raise PopError(409, "InvalidStatus", f"job {job_id} is {job['Status']}, not Running")
        fail = request.query_params.get("Fail") == "true" or not job.get("ResourceId")
        dlc_runner.preempt(emulator, job_id, pod_id, fail=fail)
        return {"JobId": job_id, "PodId": pod_id, "Outcome": "failed" if fail else "restarted",
                "RequestId": request_id()}

    return r


def _pod_view(pod: dict) -> dict:
    return {k: v for k, v in pod.items() if k != "RestartCount"} | {"SubStatus": f"Restarted {pod['RestartCount']}x"
                                                                    if pod["RestartCount"] else ""}


def start(emulator) -> None:
    dlc_runner.resume_all(emulator)


def stop(emulator) -> None:
    dlc_runner.shutdown(emulator)
