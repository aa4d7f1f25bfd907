"""Running an emulated DLC job: OSS data sources become mounts, every pod a container or a process.

Per job: its OSS data sources are copied from the emulator's object store into
`<data-dir>/jobs/<id>/mounts/<n>` (an OSS mount, as DLC's ossfs gives a pod), then each pod runs
the job's UserCommand with the job's Envs plus DLC's PyTorchJob variables (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK):

- as a Docker container of the job's image, the folders bind-mounted at the job's mount paths
  (executor `docker`, or `auto` when the engine answers and the image is present here);
- else as a local process, mount paths in the command and the Envs mapped to those folders.

Pods get a clean environment: the emulator's own variables (its AccessKey among them) never
reach a job.

Read-write mounts are written back to OSS every few seconds while the pods run (an OSS mount
writes through), and when the pods end, the job is stopped or a pod is preempted. A preemption restarts every pod of the job, as DLC does for a PyTorchJob:
pods get SIGTERM (the job contract saves a checkpoint), writable mounts go back to OSS and are
fetched afresh, so the restarted job resumes from what OSS holds. The pods' process ids are
kept in the job's state, so an emulator restarted after a crash stops the old pods and
restarts the job from its OSS checkpoints.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pai_distil.core import dockercli
from pai_distil.core.env_numbers import EMULATOR_GRACE_S, env_number
from pai_distil.core.errors import UserError
from .objects import store_of

GRACE_S = 30.0
POLL_S = 0.2
SYNC_S = 2.0  # how often writable mounts are copied back to OSS while pods run
_runs: dict[str, JobRun] = {}
_lock = threading.Lock()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_oss_uri(uri: str) -> tuple[str, str]:
    """`oss://bucket[.endpoint]/prefix/` -> (bucket, `prefix/`)."""
    rest = uri[len("oss://"):]
    host, _, prefix = rest.partition("/")
    bucket = host.split(".", 1)[0]
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobRun(threading.Thread):
    def __init__(self, emulator, job_id: str):
        super().__init__(name=f"dlc-{job_id}", daemon=True)
        self.emulator = emulator
        self.job_id = job_id
        self.store = emulator.store("dlc-jobs")
        self.objects = store_of(emulator)
        self.root = emulator.data_dir / "jobs" / job_id
        self.stop_requested = threading.Event()
        self.preempted: list[str] = []
        self.shutting_down = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.containers: dict[str, str] = {}  # pod id -> container name, when pods run in Docker
        self.readers: list[threading.Thread] = []  # one per pod: its output into its log, line by line
        self.fail_on_preempt = False

    def log_path(self, pod_id: str) -> Path:
        return self.root / "logs" / f"{pod_id}.log"

    # --- state ---
    def job(self) -> dict:
        return self.store.get(self.job_id)

    def event(self, message: str, **changes) -> None:
        with self.store.lock:
            job = self.job()
            job["_events"] = [*job.get("_events", []), f"{iso(time.time())} {message}"]
            job.update(changes)
            self.store.put(self.job_id, job)

    def set_pods(self, status: str, **extra) -> None:
        with self.store.lock:
            job = self.job()
            for p in job["Pods"]:
                p["Status"] = status
                p.update(extra)
            self.store.put(self.job_id, job)

    # --- mounts ---
    def mounts(self, job: dict) -> list[dict]:
        out = []
        for i, ds in enumerate(job.get("DataSources") or []):
            bucket, prefix = parse_oss_uri(ds["Uri"])
            out.append({"path": ds["MountPath"].rstrip("/") or "/", "host": self.root / "mounts" / str(i),
                        "bucket": bucket, "prefix": prefix,
                        "rw": (ds.get("MountAccess") or "RW") not in ("RO", "ReadOnly")})
        return out

    def materialise(self, mounts: list[dict], only_rw: bool = False) -> None:
        for m in mounts:
            if only_rw and not m["rw"]:
                continue
            shutil.rmtree(m["host"], ignore_errors=True)
            m["host"].mkdir(parents=True)
            if self.objects.bucket(m["bucket"]) is None:
                raise RuntimeError(f"data source oss://{m['bucket']}/{m['prefix']}: bucket {m['bucket']} does not exist")
            self.objects.download_prefix(m["bucket"], m["prefix"], m["host"])

    def write_back(self, mounts: list[dict]) -> None:
        for m in mounts:
            if m["rw"] and m["host"].is_dir():
                self.objects.upload_dir(m["host"], m["bucket"], m["prefix"])

    @staticmethod
    def mapped(text: str, mounts: list[dict]) -> str:
        for m in sorted(mounts, key=lambda m: len(m["path"]), reverse=True):
            text = text.replace(m["path"], str(m["host"]))
        return text

    # --- pods ---
    def executor(self, image: str) -> str:
        """`docker` or `process` for this job, as the emulator was told (`auto`: Docker when it can)."""
        mode = getattr(self.emulator, "executor", "auto")
        if mode == "process":
            return "process"
        try:
            dockercli.require_engine()
            present = bool(dockercli.image_id(image))
        except UserError:
            present = False
        if mode == "docker" and not present:
            raise RuntimeError(f"image {image} is not present on this machine (or no Docker engine); "
                               "build or pull it, or start the emulator with --executor process")
        return "docker" if present else "process"

    def pod_argv(self, how: str, job: dict, pod: dict, env: dict[str, str], mounts: list[dict]) -> list[str]:
        if how == "process":
            return ["/bin/sh", "-c", self.mapped(job["UserCommand"], mounts)]
        from ..backends.containers import container_user, writable_dir

        name = f"pai-dlc-{pod['PodId']}"
        self.containers[pod["PodId"]] = name
        argv = [dockercli.binary(), "run", "--rm", "--init", "--name", name, "--label", f"pai-distil.dlc-job={self.job_id}",
                "--network", "host", "--shm-size", "1g"]
        user = container_user()
        if user:
            argv += ["--user", user]
        for m in mounts:
            if m["rw"]:
                writable_dir(m["host"])
            argv += ["--mount", f"type=bind,source={m['host']},target={m['path']}" + ("" if m["rw"] else ",readonly")]
        for k in env:
            argv += ["-e", k]  # values come from the docker client's environment, not its command line
        return argv + [job["JobSpecs"][0]["Image"], "sh", "-c", job["UserCommand"]]

    def launch(self, job: dict, mounts: list[dict]) -> None:
        port = _free_port()
        pods = job["Pods"]
        how = self.executor(job["JobSpecs"][0]["Image"])
        for d in ("home", "tmp", "logs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        if how == "process":
            base = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                    "HOME": str(self.root / "home"), "LANG": os.environ.get("LANG", "C.UTF-8"),
                    "TMPDIR": str(self.root / "tmp"), "PYTHONUNBUFFERED": "1"}
            job_env = {k: self.mapped(str(v), mounts) for k, v in (job.get("Envs") or {}).items()}
        else:
            base = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
            job_env = {k: str(v) for k, v in (job.get("Envs") or {}).items()}
        if not glob.glob("/dev/nvidia[0-9]*"):  # this host's CPUs stand in for the type's GPUs: the job must
            job_env.pop("PAI_DISTIL_GPUS", None)  # not refuse them (on DLC it fails where torch cannot use its GPUs)
        pids = {}
        gpus = node_gpus(job["JobSpecs"][0])
        for rank, pod in enumerate(pods):
            env = {**base, "NPROC_PER_NODE": str(max(1, int(gpus))), **job_env, "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "WORLD_SIZE": str(len(pods)), "RANK": str(rank),
                   "DLC_JOB_ID": self.job_id, "DLC_POD_NAME": pod["PodId"]}
            argv = self.pod_argv(how, job, pod, env, mounts)
            proc = subprocess.Popen(argv, env=env if how == "process" else {**dockercli.env(), **env},
                                    cwd=self.root / "home", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            reader = threading.Thread(target=_timestamp_lines, args=(proc.stdout, self.log_path(pod["PodId"])),
                                      name=f"log-{pod['PodId']}", daemon=True)
            reader.start()
            self.readers.append(reader)
            self.procs[pod["PodId"]] = proc
            pids[pod["PodId"]] = proc.pid
        where = "local processes" if how == "process" else f"containers of {job['JobSpecs'][0]['Image']}"
        self.event(f"{len(pods)} pod(s) started as {where}", _pids=pids)
        self.set_pods("Running", GmtStartTime=iso(time.time()))

    def signal_pods(self, sig: int) -> None:
        for pod_id, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            name = self.containers.get(pod_id)
            if name:
                dockercli.docker("kill", "--signal", "KILL" if sig == signal.SIGKILL else "TERM", name, check=False)
                continue
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def drain_logs(self) -> None:
        """Wait (briefly) until every line the pods wrote is in their logs."""
        for reader in self.readers:
            reader.join(timeout=10)
        self.readers = []

    def stop_pods(self) -> None:
        """SIGTERM (the job checkpoints), SIGKILL after the grace period."""
        self.signal_pods(signal.SIGTERM)
        deadline = time.monotonic() + env_number(EMULATOR_GRACE_S, GRACE_S)
        while any(p.poll() is None for p in self.procs.values()) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self.signal_pods(signal.SIGKILL)
        for p in self.procs.values():
            p.wait()
        if self.containers:
            remove_containers(self.job_id)

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - a job the emulator cannot run fails, with the reason
            if not self.shutting_down.is_set():
                self.signal_pods(signal.SIGKILL)
                self.event(f"job failed: {e}", Status="Failed", ReasonCode="JobFailed", ReasonMessage=str(e),
                           GmtFinishTime=iso(time.time()), GmtFailedTime=iso(time.time()))
        finally:
            with _lock:
                _runs.pop(self.job_id, None)

    def _run(self) -> None:
        job = self.job()
        if job["Status"] in ("Creating",):
            self.event("job queuing", Status="Queuing")
            self.event("job dequeued: resources allocated", Status="Dequeued")
        mounts = self.mounts(job)
        self.materialise(mounts)
        started = time.time()
        self.event("job running", Status="Running", GmtRunningTime=iso(started))
        limit = job.get("JobMaxRunningTimeMinutes") or 0
        while True:
            self.procs = {}
            self.launch(self.job(), mounts)
            outcome = self.watch(started, limit, mounts)
            if outcome == "preempted" and self.fail_on_preempt:
                self.stop_pods()
                self.drain_logs()
                outcome = "preempted-failed"
                break
            if outcome == "preempted":
                self.stop_pods()
                self.drain_logs()
                self.write_back(mounts)
                self.materialise(mounts, only_rw=True)
                with self.store.lock:
                    job = self.job()
                    for p in job["Pods"]:
                        if p["PodId"] in self.preempted:
                            p["RestartCount"] += 1
                    job["RestartTimes"] = str(int(job.get("RestartTimes") or 0) + 1)
                    self.store.put(self.job_id, job)
                self.event(f"pod(s) {', '.join(self.preempted)} preempted (spot instance reclaimed); "
                           "job restarts from its data sources", Status="Running")
                self.preempted = []
                continue
            break
        if outcome == "shutdown":
            return
        if outcome in ("stopped", "timeout"):
            self.stop_pods()
            self.drain_logs()
        self.write_back(mounts)
        now = iso(time.time())
        if outcome == "stopped":
            self.set_pods("Stopped")
            self.event("job stopped", Status="Stopped", GmtFinishTime=now, GmtStoppedTime=now,
                       ReasonCode="JobStoppedByUser", ReasonMessage="Job is stopped by user.")
        elif outcome == "timeout":
            self.set_pods("Failed")
            self.event("job failed: maximum running time exceeded", Status="Failed", GmtFinishTime=now,
                       GmtFailedTime=now, ReasonCode="JobMaxRunningTimeExceeded",
                       ReasonMessage=f"the job ran longer than JobMaxRunningTimeMinutes={limit}")
        elif outcome == "preempted-failed":
            pods = ", ".join(self.preempted)
            self.set_pods("Failed")
            self.event(f"job failed: pod(s) {pods} preempted (spot instance reclaimed)", Status="Failed",
                       GmtFinishTime=now, GmtFailedTime=now, ReasonCode="JobPreempted",
                       ReasonMessage=f"pod(s) {pods}: the spot instance was reclaimed")
        elif outcome == "succeeded":
            self.set_pods("Succeeded", GmtFinishTime=now)
            self.event("job succeeded", Status="Succeeded", GmtFinishTime=now, GmtSuccessedTime=now,
                       ReasonCode="JobSucceeded", ReasonMessage="")
        else:
            pod_id, code = outcome
            with self.store.lock:
                job = self.job()
                for p in job["Pods"]:
                    rc = self.procs[p["PodId"]].returncode
                    p["Status"] = "Succeeded" if rc == 0 else "Failed"
                self.store.put(self.job_id, job)
            last = ([line for line in pod_log(self.emulator, self.job_id, pod_id) if line.strip()] or [""])[-1]
            self.event(f"job failed: pod {pod_id} exited with code {code}", Status="Failed", GmtFinishTime=now,
                       GmtFailedTime=now, ReasonCode="JobFailed",
                       ReasonMessage=f"pod {pod_id} exited with code {code}: {last.strip()[:500]}")

    def watch(self, started: float, limit_min: int, mounts: list[dict]):
        """Until the pods end, or a stop, preemption, shutdown or time limit; returns what happened."""
        synced = time.monotonic()
        while True:
            if time.monotonic() - synced > SYNC_S:
                self.write_back(mounts)
                synced = time.monotonic()
            if self.shutting_down.is_set():
                self.signal_pods(signal.SIGKILL)
                return "shutdown"
            if self.stop_requested.is_set():
                return "stopped"
            if self.preempted:
                return "preempted"
            if limit_min and time.time() - started > limit_min * 60:
                return "timeout"
            codes = {pod: p.poll() for pod, p in self.procs.items()}
            bad = [(pod, c) for pod, c in codes.items() if c not in (None, 0)]
            if bad:
                self.stop_pods()  # one failed pod ends the job: its peers would wait for it forever
                self.drain_logs()
                return bad[0]
            if all(c == 0 for c in codes.values()):
                self.drain_logs()
                return "succeeded"
            time.sleep(POLL_S)


def node_gpus(spec: dict) -> int:
    """A pod's GPUs, as DLC sets NPROC_PER_NODE from them: the ECS type's on public resources, else the
    ResourceConfig's (a quota)."""
    from .ecs_specs import SPECS

    if spec.get("EcsSpec") in SPECS:
        return SPECS[spec["EcsSpec"]]["Gpu"]
    return int((spec.get("ResourceConfig") or {}).get("GPU") or 0)


def remove_containers(job_id: str) -> None:
    """Containers of a job's pods, whatever their state (none when pods ran as processes)."""
    try:
        dockercli.require_engine()
    except UserError:
        return
    ids = dockercli.docker("ps", "-aq", "--filter", f"label=pai-distil.dlc-job={job_id}", check=False).stdout.split()
    if ids:
        dockercli.docker("rm", "-f", *ids, check=False)


def launch(emulator, job_id: str) -> None:
    with _lock:
        if job_id in _runs:
            return
        run = _runs[job_id] = JobRun(emulator, job_id)
    run.start()


def stop(emulator, job_id: str) -> None:
    store = emulator.store("dlc-jobs")
    with _lock:
        run = _runs.get(job_id)
    if run is not None:
        store.update(job_id, Status="Stopping")
        run.stop_requested.set()
    else:
        now = iso(time.time())
        store.update(job_id, Status="Stopped", GmtFinishTime=now, GmtStoppedTime=now, ReasonCode="JobStoppedByUser")


def preempt(emulator, job_id: str, pod_id: str, fail: bool = False) -> None:
    """A spot instance reclaimed: DLC restarts the job's pods, or (`fail`) reports the job Failed."""
    with _lock:
        run = _runs.get(job_id)
    if run is not None:
        run.fail_on_preempt = run.fail_on_preempt or fail
        run.preempted.append(pod_id)


def _timestamp_lines(stream, path: Path) -> None:
    """A pod's output into its log, each line stamped with the time it came (GetPodLogs filters by it)."""
    with stream, open(path, "ab", buffering=0) as log:
        for line in iter(stream.readline, b""):
            log.write(b"%.6f " % time.time() + line.rstrip(b"\n") + b"\n")


def pod_log_timed(emulator, job_id: str, pod_id: str) -> list[tuple[float, str]]:
    """(time, line) for every line a pod logged, in order."""
    path = emulator.data_dir / "jobs" / job_id / "logs" / f"{pod_id}.log"
    try:
        raw = path.read_bytes().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for entry in raw:
        stamp, _, line = entry.partition(" ")
        try:
            out.append((float(stamp), line))
        except ValueError:  # a line of an older emulator, without its time
            out.append((0.0, entry))
    return out


def pod_log(emulator, job_id: str, pod_id: str) -> list[str]:
    return [line for _, line in pod_log_timed(emulator, job_id, pod_id)]


def resume_all(emulator) -> None:
    """After a restart: pods of the last emulator are stopped, unfinished jobs start again."""
    store = emulator.store("dlc-jobs")
    for job in store.all():
        if job["Status"] in ("Succeeded", "Failed", "Stopped"):
            continue
        for pid in (job.get("_pids") or {}).values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        remove_containers(job["JobId"])
        if job["Status"] == "Stopping":
            store.update(job["JobId"], Status="Stopped", GmtFinishTime=iso(time.time()))
            continue
        store.update(job["JobId"], _events=[*job.get("_events", []), f"{iso(time.time())} emulator restarted; "
                                            "job restarts from its data sources"])
        launch(emulator, job["JobId"])


def shutdown(emulator) -> None:
    with _lock:
        runs = list(_runs.values())
    for run in runs:
        run.shutting_down.set()
    for run in runs:
        run.join(timeout=10)
