"""The `pai` backend: a job runs as a PAI-DLC PyTorchJob, its data in OSS.

`start` (in the foreground, with progress bars): checks the PAI config and the job image (the spec's,
else the config's `image`), uploads the local inputs and the stage config to
OSS (content-addressed, unchanged files are not sent again), builds the CreateJob request and
submits it once per run id. An input already in OSS (`oss://...`, the output of an earlier stage)
is mounted where it is, after its manifest is checked against what OSS lists: stage outputs never
travel through the client on their way to the next stage. A detached supervisor (`python -m
pai_distil.backends.pai RUN_ID REGISTRY`) then polls the job with backoff, appends every pod's
log to the run's log, and when the job ends checks the output's manifest in OSS; only with
`--download` (or `pai-distil runs pull`) does the output come home. A job DLC failed through
preemption or node loss is submitted again, up to `max_restarts` times, and resumes from its OSS
checkpoints; the attempts are kept in the run's `dlc-job.json`. Cancel = SIGTERM to the
supervisor = StopJob.

OSS layout under `<oss_prefix>/`: `inputs/<digest>/` and `configs/<digest>/` (the stage config)
as read-only mounts, `work/<stage>-<key>/output/` and `.../checkpoints/` (read-write mounts). The work
folder is keyed like the local work dir, so a rerun, a restarted pod or a preempted spot
instance finds its checkpoints there and resumes. Jobs name the region's internal OSS endpoint
in their data sources, so their traffic stays inside Alibaba Cloud.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path, PurePosixPath

from rich.console import Console

from pai_distil.core import artifacts
from pai_distil.core.config import JobSpec
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry, RunRecord

from ..paths import run_dir
from .base import CONFIG_FILE, Backend
from .job_env import contract_env, named_secrets, secrets
from .supervisor import NO_ARTIFACT, Supervisor, supervise

SUPERVISOR_MODULE = "pai_distil.backends.pai"
JOB_FILE = "dlc-job.json"
MAX_POLL_ERRORS = 5
NOT_STARTED = ("Pending", "Queuing", "Creating", "Dequeued")  # pod states before there is a log to read
DLC_SETS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")  # DLC gives every pod its own
CREDENTIAL_ENV = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN")


def _mount(*parts: str) -> str:
    from pai_distil.cloud.pai.dlc import MOUNT_ROOT

    return str(PurePosixPath(MOUNT_ROOT, *parts))


class Plan:
    """Where a job's files go in OSS and how the job sees them; computed without touching OSS."""

    def __init__(self, spec: JobSpec, cfg):
        from pai_distil.cloud.pai.dlc import Mount

        self.spec, self.cfg = spec, cfg
        if not cfg.quota_id and not (spec.resources.instance_type or cfg.ecs_spec):
            from pai_distil.cloud.pai.config import ECS_SPEC_EXAMPLE, config_path

            raise UserError(f"--backend pai needs `ecs_spec` (public resources) or `quota_id` in {config_path()}; set "
                            f"one with `pai-distil config set ecs_spec={ECS_SPEC_EXAMPLE}`, or pass --ecs-spec")
        base = PurePosixPath(cfg.oss_prefix)
        work = Path(spec.output).parent.name
        self.uploads: list[tuple[str, Path, str]] = []  # (label, local path, key prefix)
        self.remote_inputs: dict[str, str] = {}  # input name -> oss:// URI, mounted where it is
        self.mounts: list[Mount] = []
        inputs: dict[str, str] = {}
        for name, source in sorted(spec.inputs.items()):
            if source.startswith("oss://"):
                self.remote_inputs[name] = source
                self.mounts.append(Mount(self.job_uri(_bucket_prefix(source, cfg)), _mount("inputs", name), False))
                inputs[name] = _mount("inputs", name)
                continue
            path = Path(source)
            prefix = str(base / "inputs" / artifacts.digest(path)[:24])
            self.uploads.append((f"input {name}", path, prefix))
            self.mounts.append(Mount(self.job_uri(prefix), _mount("inputs", name), False))
            inputs[name] = _mount("inputs", name, path.name) if path.is_file() else _mount("inputs", name)
        config_digest = hashlib.sha256(json.dumps(spec.config, indent=1).encode()).hexdigest()
        self.run_prefix = str(base / "configs" / config_digest[:24])  # as written by write_run_files
        self.output_prefix = output_prefix(cfg, work)
        self.checkpoint_prefix = str(base / "work" / work / "checkpoints")
        self.mounts += [Mount(self.job_uri(self.run_prefix), _mount("run"), False),
                        Mount(self.job_uri(self.output_prefix), _mount("output"), True),
                        Mount(self.job_uri(self.checkpoint_prefix), _mount("checkpoints"), True)]
        env = contract_env(spec, _mount("run", CONFIG_FILE), inputs=inputs, output=_mount("output"),
                           checkpoint_dir=_mount("checkpoints"))
        # DLC gives every pod its own rendezvous variables, and NPROC_PER_NODE (the node's GPU count)
        # unless the user asked for a number of processes.
        dlc_sets = DLC_SETS if spec.procs_per_node else (*DLC_SETS, "NPROC_PER_NODE")
        self.env = {k: v for k, v in env.items() if k not in dlc_sets}
        present = secrets(spec.config)
        # Envs are the only way DLC hands a job a value, and they show in the job's description.
        if cfg.pass_secrets:
            self.env.update(present)
        self.withheld = [] if cfg.pass_secrets else list(present)

    def job_uri(self, prefix: str) -> str:
        """A data source URI naming the internal endpoint, so the pods read and write OSS inside the region."""
        return f"oss://{self.cfg.oss_bucket}.{self.cfg.job_oss_host()}/{prefix.rstrip('/')}/"

    def image(self) -> str:
        """The job image: PAI pulls it from a registry, so it is named in the config, never guessed."""
        image = self.spec.image or self.cfg.image
        if not image:
            from pai_distil.cloud.pai.config import config_path

            raise UserError(f"--backend pai needs `image` in {config_path()}: a job image PAI can pull, e.g. "
                            "`pai-distil images build --target gpu --push REGISTRY`, then "
                            "`pai-distil config set image=REGISTRY/pai-distil-gpu:TAG`")
        return image

    def request(self, attempt: int = 1):
        from pai_distil.cloud.pai.dlc import create_job_request

        return create_job_request(self.spec, self.cfg, self.image(), self.mounts, self.env, attempt=attempt)


def output_prefix(cfg, work_name: str) -> str:
    """The key prefix of a stage's output in OSS, from the name of its work dir (`<stage>-<key>`)."""
    return str(PurePosixPath(cfg.oss_prefix, "work", work_name, "output"))


def output_uri(record: RunRecord) -> str:
    """Where the next stage reads a pai run's output: in OSS when a DLC job wrote it there (downloaded or
    not), else where it is (a cache hit of a local copy, which the next stage uploads, unchanged files
    skipped)."""
    from pai_distil.cloud.pai import config

    if (record.output or "").startswith("oss://") or read_job_info(record.id) is None:
        return record.output
    cfg = config.load()
    return f"oss://{cfg.oss_bucket}/{output_prefix(cfg, Path(record.work_dir).name)}/"


def _bucket_prefix(uri: str, cfg) -> str:
    from pai_distil.cloud.pai.oss import split_uri

    bucket, prefix = split_uri(uri)
    if bucket != cfg.oss_bucket:
        raise UserError(f"input {uri} is in bucket {bucket}, not the configured {cfg.oss_bucket}; jobs mount the "
                        "configured bucket only: copy it there or `pai-distil config set oss_bucket=" + bucket + "`")
    return prefix


def remote_artifact(uri: str) -> dict:
    """The manifest of an artifact in OSS, checked against the objects OSS lists; a one-line error when the
    artifact is unfinished or its files do not match. Used for `oss://` inputs and cached outputs."""
    from pai_distil.cloud.pai.oss import Storage

    cfg = load_config()
    storage = Storage(cfg)
    manifest = storage.remote_manifest(storage.prefix_of(uri))
    if manifest is None:
        raise UserError(f"{uri} has no manifest.json: it is not a finished artifact; rerun the stage that writes it")
    return manifest


def load_config(need_credentials: bool = True):
    from pai_distil.cloud.pai import config

    cfg = config.load()
    config.require(cfg, "oss_bucket")
    if need_credentials:
        from pai_distil.cloud.pai.credentials import chain

        chain()
    return cfg


def dry_run_body(spec: JobSpec) -> dict:
    """The CreateJob body `start` would send (nothing uploaded, no credentials needed)."""
    from ..masking import masked
    from pai_distil.cloud.pai.dlc import SECRET_MARK, request_body

    plan = Plan(spec, load_config(need_credentials=False))
    names = [*named_secrets(spec.config), *CREDENTIAL_ENV]
    return masked(request_body(plan.request()), names=names, values=[os.environ.get(n) for n in names],
                  mark=SECRET_MARK)


class PaiBackend(Backend):
    name = "pai"
    supervisor_module = SUPERVISOR_MODULE
    options = ("download", "max_restarts")

    def __init__(self, registry: Registry | None = None, download: bool | None = None,
                 max_restarts: int | None = None):
        super().__init__(registry)
        self.download, self.max_restarts = bool(download), max_restarts
        self.console = Console(stderr=True)
        self._plan: Plan | None = None  # from _prepare to _launch of one start

    def _prepare(self, spec: JobSpec) -> JobSpec:
        plan = Plan(spec, load_config())
        spec = spec.model_copy(update={"image": plan.image()})  # a missing setting fails before anything is uploaded
        plan.spec, self._plan = spec, plan
        return spec

    def _launch(self, spec: JobSpec, record: RunRecord, config_path: Path) -> dict[str, str]:
        plan, self._plan = self._plan, None
        job_id = self._submit(spec, record, plan, config_path)
        self.console.print(f"DLC job [bold]{job_id}[/] for run {record.id}")
        return dict(os.environ)  # the supervisor's own credentials and settings, to follow the job

    def _submit(self, spec: JobSpec, record: RunRecord, plan: Plan, config_path: Path) -> str:
        from pai_distil.cloud.pai import dlc
        from pai_distil.cloud.pai.oss import Storage, Transfer

        console = self.console
        if plan.withheld:
            names = ", ".join(f"${n}" for n in plan.withheld)
            console.print(f"[yellow]warning:[/] the job is not handed {names} (its config's api_key_env): an "
                          "endpoint that needs it will refuse the job. `pai-distil config set pass_secrets=true` "
                          "hands it as a DLC Env, which workspace members can read")
        directory = run_dir(record.id)
        storage = Storage(plan.cfg, console)
        storage.ensure_bucket()
        for name, uri in plan.remote_inputs.items():  # checked by manifest where it lies, never copied
            if storage.remote_manifest(storage.prefix_of(uri)) is None:
                raise UserError(f"input '{name}' ({uri}) has no manifest.json: it is not a finished artifact")
            console.print(f"input {name}: {uri} (in OSS, manifest checked)", soft_wrap=True)
        total = Transfer()
        for label, local, prefix in [*plan.uploads, ("stage config", config_path, plan.run_prefix)]:
            t = storage.upload(local, prefix, label)
            for f in ("files_sent", "bytes_sent", "files_skipped", "bytes_skipped"):
                setattr(total, f, getattr(total, f) + getattr(t, f))
        console.print(total.summary())
        client = dlc.client(plan.cfg)
        job_id, created = dlc.submit(client, plan.request(), spec.run_id)
        if not created:
            console.print(f"run {spec.run_id} already has DLC job {job_id}; not submitting it again")
        max_restarts = self.max_restarts if self.max_restarts is not None else plan.cfg.restarts()
        write_job_info(directory, {
            "job_id": job_id, "config": plan.cfg.model_dump(mode="json"), "output_prefix": plan.output_prefix,
            "checkpoint_prefix": plan.checkpoint_prefix, "download": self.download, "max_restarts": max_restarts,
            "attempts": [{"job_id": job_id, "status": "Submitted", "reason": ""}]})
        return job_id


BACKEND = PaiBackend


def write_job_info(directory: Path, info: dict) -> None:
    tmp = directory / f".tmp-{JOB_FILE}"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, directory / JOB_FILE)


def read_job_info(run_id: str) -> dict | None:
    path = run_dir(run_id) / JOB_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def attempts_line(run_id: str) -> str | None:
    """`2: dlc1 Failed (JobPreempted), dlc2 Succeeded` for `runs show`; None for a run with no DLC job."""
    info = read_job_info(run_id)
    if not info:
        return None
    attempts = info.get("attempts") or [{"job_id": info["job_id"], "status": "?", "reason": ""}]
    shown = [f"{a['job_id']} {a['status']}" + (f" ({a['reason']})" if a.get("reason") else "") for a in attempts]
    return f"{len(attempts)} of at most {1 + int(info.get('max_restarts') or 0)}: " + ", ".join(shown)


def pull_output(record: RunRecord, dest: Path | None = None, registry: Registry | None = None) -> str:
    """Download a finished pai run's output from OSS (`runs pull`); returns where it now is."""
    from pai_distil.cloud.pai.oss import Storage

    if record.backend != "pai":
        raise UserError(f"run {record.id} ran on the {record.backend} backend; its output is already here: {record.output}")
    if record.state not in ("succeeded", "cached"):
        raise UserError(f"run {record.id} is {record.state}; only a finished run's output can be pulled")
    storage = Storage(load_config())
    prefix = output_prefix(storage.cfg, Path(record.work_dir).name)  # a cache hit shares its work dir's prefix
    if storage.remote_manifest(prefix) is None:
        raise UserError(f"{storage.uri(prefix)}/ has no manifest.json; the run's output is not in OSS")
    target = dest or Path(record.work_dir) / "output"
    moved = storage.download(prefix, target, f"pull {record.id}")
    storage.console.print(moved.summary("downloaded"))
    if dest is None and registry is not None:
        registry.update(record.id, output=str(target))
    return str(target)


class PaiSupervisor(Supervisor):
    """Follows a run's DLC jobs: status changes and pod logs into the run's log, a preempted job
    submitted again, the output checked in OSS (and brought home when asked)."""

    def __init__(self, run_id: str, registry: Registry):
        super().__init__(run_id, registry)
        self.client = None
        self.job_id = None
        self.stop_sent = False

    submitted_by_start = True  # PaiBackend.start submitted the DLC job: a cancel stops it

    def launch(self, spec: JobSpec, record: RunRecord) -> None:
        """Take over the DLC job `start` submitted."""
        from pai_distil.cloud.pai import dlc
        from pai_distil.cloud.pai.config import PaiConfig

        self.info = read_job_info(self.run_id)
        self.cfg = PaiConfig.model_validate(self.info["config"])
        self.client, self.job_id = dlc.client(self.cfg), self.info["job_id"]

    def poll(self, spec: JobSpec, record: RunRecord) -> dict | None:
        """Follow the DLC job, submitted again after a preemption; the terminal record's fields, or
        None when a job succeeded (its output is then checked)."""
        from pai_distil.cloud.pai import dlc

        info = self.info
        while True:
            job = self.follow(self.cfg)
            self.record_attempt(info, job)
            if job.status == "Stopped" or self.stop_requested:
                return {"state": "cancelled", "error": f"DLC job {self.job_id} stopped"}
            if job.status == "Succeeded":
                return None
            reason = job.reason_message or job.reason_code or "no reason given"
            machines = dlc.failed_by_infrastructure(job)  # not the job's own code: worth another attempt
            if not machines or len(info["attempts"]) > int(info.get("max_restarts") or 0):
                why = f" (after {len(info['attempts'])} attempts)" if machines else ""
                return {"state": "failed", "error": f"DLC job {self.job_id} {job.status.lower()}{why}: {reason}",
                        "exit_code": 1}
            try:
                self.resubmit(spec, self.cfg, info, reason)
            except UserError as e:
                return {"state": "failed", "error": f"resubmitting after a preemption: {e.message}", "exit_code": 1}

    def stop(self, sig: int) -> None:
        """StopJob, once (DLC gives the pods SIGTERM, then kills them)."""
        from pai_distil.cloud.pai import dlc

        if self.client is not None and self.job_id and not self.stop_sent:
            dlc.stop_job(self.client, self.job_id)
            self.stop_sent = True

    def record_attempt(self, info: dict, job) -> None:
        info["attempts"][-1].update(status=job.status, reason=job.reason_code if job.status != "Succeeded" else "")
        write_job_info(run_dir(self.run_id), info)

    def resubmit(self, spec: JobSpec, cfg, info: dict, reason: str) -> None:
        """The same job again, as a new DLC job on the same OSS prefixes: it resumes from its checkpoints."""
        from pai_distil.cloud.pai import dlc

        attempt = len(info["attempts"]) + 1
        self.note(f"DLC job {self.job_id} failed through its machines ({reason}); submitting attempt {attempt} "
                  f"of {1 + int(info['max_restarts'])}, which resumes from the checkpoints in OSS")
        request = Plan(spec, cfg).request(attempt=attempt)
        try:
            self.job_id = self.client.create_job(request).body.job_id
        except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
            raise dlc.explain(e, "resubmitting the DLC job") from None
        info["job_id"] = self.job_id
        info["attempts"].append({"job_id": self.job_id, "status": "Submitted", "reason": ""})
        write_job_info(run_dir(self.run_id), info)
        self.note(f"DLC job {self.job_id} for run {self.run_id} (attempt {attempt})")

    def collect(self, spec: JobSpec, record: RunRecord, ended: dict | None) -> None:
        """The output, checked by its manifest in OSS; downloaded and checked again only when asked."""
        from pai_distil.cloud.pai.oss import Storage

        if ended is not None:
            return self.finish(**ended)
        cfg, info = self.cfg, self.info
        storage = Storage(cfg, Console(file=sys.stdout, force_terminal=False, width=120))
        uri = storage.uri(info["output_prefix"].rstrip("/") + "/")
        try:
            manifest = storage.remote_manifest(info["output_prefix"])
            if manifest is None:
                return self.finish("failed", error=NO_ARTIFACT, exit_code=0)
            self.note(f"output in OSS: {uri} ({len(manifest.get('files', []))} files, manifest checked)")
            if not info.get("download"):
                self.registry.update(self.run_id, output=uri)
                return self.finish("succeeded", exit_code=0)
            moved = storage.download(info["output_prefix"], Path(spec.output), "output")
        except UserError as e:
            return self.finish("failed", error=f"output of DLC job {self.job_id}: {e.message}", exit_code=1)
        self.note(moved.summary("downloaded"))
        return self.finish_output(spec.output)

    def follow(self, cfg):
        """Poll one DLC job until it ends, its pods' logs into the run's log; returns its last body."""
        from pai_distil.cloud.pai import dlc

        cursors: dict[str, dlc.LogCursor] = {}
        status, errors = None, 0
        for delay in dlc.backoff(0.5, 1.5, 5.0):
            if self.stop_requested and not self.stop_sent:
                self.note(f"cancel requested: stopping DLC job {self.job_id}")
                self.stop(signal.SIGTERM)
            try:
                job = dlc.get_job(self.client, self.job_id)
                if job.status in dlc.TERMINAL:  # the last lines: wait until the log has them all
                    end = (dlc.parse_iso(job.gmt_finish_time) or time.time()) + 2
                    time.sleep(max(0.0, end + cfg.log_delay_s - time.time()))
                    self.pump(job, cursors, end)
                else:
                    self.pump(job, cursors, time.time() - cfg.log_delay_s)
                errors = 0
            except UserError as e:
                errors += 1
                self.note(f"{e.message} (attempt {errors} of {MAX_POLL_ERRORS})")
                if errors >= MAX_POLL_ERRORS or "refused the credentials" in e.message:
                    raise
                time.sleep(delay)
                continue
            if job.status != status:
                status = job.status
                self.note(f"DLC job {self.job_id}: {status}")
            if status == "Running" and self.registry.get(self.run_id).state != "running":
                self.running()
            if status in dlc.TERMINAL:
                return job
            end = time.monotonic() + delay
            while time.monotonic() < end and not (self.stop_requested and not self.stop_sent):
                time.sleep(0.1)

    def pump(self, job, cursors: dict, until: float) -> None:
        """Append every pod's lines logged up to `until`, each once; several pods are told apart by a prefix."""
        from pai_distil.cloud.pai import dlc

        pods = job.pods or []
        created = dlc.parse_iso(job.gmt_create_time) or time.time() - 7 * 86400  # GetPodLogs' own default
        for i, pod in enumerate(pods):
            if pod.status in NOT_STARTED:  # no log yet; its cursor still starts at the job's creation
                continue
            cursor = cursors.setdefault(pod.pod_id, dlc.LogCursor(since=created))
            lines, complete = dlc.new_pod_lines(self.client, self.job_id, pod.pod_id, cursor, until)
            if not complete and not cursor.warned:
                cursor.warned = True
                self.note(f"pod {pod.pod_id} logged more than {dlc.MAX_LINES_CEILING} lines in one second; "
                          "some of them are not shown (the DLC console has them all)")
            prefix = f"[{pod.pod_id}] " if len(pods) > 1 else ""
            for line in lines:
                shown = line if i == 0 and line.startswith("[progress] ") else prefix + line
                print(shown, flush=True)

    def kill_all(self) -> None:
        """The supervisor is going away: do not leave a job running on PAI unwatched."""
        try:
            self.stop(signal.SIGKILL)
        except UserError:
            pass


def main(argv: list[str] | None = None) -> int:
    return supervise(PaiSupervisor, SUPERVISOR_MODULE, argv)


if __name__ == "__main__":
    sys.exit(main())
