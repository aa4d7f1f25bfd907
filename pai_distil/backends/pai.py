"""The `pai` backend: a job runs as a PAI-DLC PyTorchJob, its data in OSS.

`start` (in the foreground, with progress bars): uploads the inputs and the stage config to
OSS (content-addressed, unchanged files are not sent again), builds the CreateJob request and
submits it once per run id. A detached supervisor (`python -m pai_distil.backends.pai RUN_ID
REGISTRY`) then polls the job with backoff, appends every pod's log to the run's log, and when
the job ends downloads the output from OSS, checks it against its manifest and records the
outcome. Cancel = SIGTERM to the supervisor = StopJob.

OSS layout under `<oss_prefix>/`: `inputs/<digest>/` and `configs/<digest>/` (the stage config)
as read-only mounts, `work/<stage>-<key>/output/` and `.../checkpoints/` (read-write mounts). The work
folder is keyed like the local work dir, so a rerun, a restarted pod or a preempted spot
instance finds its checkpoints there and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path, PurePosixPath

from rich.console import Console

from .. import artifacts
from ..errors import UserError
from ..paths import run_dir
from ..registry import ACTIVE, Registry, RunRecord
from ..specs import JobSpec
from .process import CONFIG_FILE, ProcessBackend, contract_env, write_run_files
from .supervisor import NO_ARTIFACT, Supervisor, supervise

SUPERVISOR_MODULE = "pai_distil.backends.pai"
JOB_FILE = "dlc-job.json"
MAX_POLL_ERRORS = 5
DLC_SETS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")  # DLC gives every pod its own
CREDENTIAL_ENV = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN")


def _mount(*parts: str) -> str:
    from ..pai.dlc import MOUNT_ROOT

    return str(PurePosixPath(MOUNT_ROOT, *parts))


class Plan:
    """Where a job's files go in OSS and how the job sees them; computed without touching OSS."""

    def __init__(self, spec: JobSpec, cfg):
        from ..pai.dlc import Mount

        self.spec, self.cfg = spec, cfg
        base = PurePosixPath(cfg.oss_prefix)
        bucket_uri = f"oss://{cfg.oss_bucket}"
        work = Path(spec.output).parent.name
        self.uploads: list[tuple[str, Path, str]] = []  # (label, local path, key prefix)
        self.mounts: list[Mount] = []
        inputs: dict[str, str] = {}
        for name, local in sorted(spec.inputs.items()):
            path = Path(local)
            prefix = str(base / "inputs" / artifacts.digest(path)[:24])
            self.uploads.append((f"input {name}", path, prefix))
            self.mounts.append(Mount(f"{bucket_uri}/{prefix}/", _mount("inputs", name), False))
            inputs[name] = _mount("inputs", name, path.name) if path.is_file() else _mount("inputs", name)
        config_digest = hashlib.sha256(json.dumps(spec.config, indent=1).encode()).hexdigest()
        self.run_prefix = str(base / "configs" / config_digest[:24])  # as written by write_run_files
        self.output_prefix = str(base / "work" / work / "output")
        self.checkpoint_prefix = str(base / "work" / work / "checkpoints")
        self.mounts += [Mount(f"{bucket_uri}/{self.run_prefix}/", _mount("run"), False),
                        Mount(f"{bucket_uri}/{self.output_prefix}/", _mount("output"), True),
                        Mount(f"{bucket_uri}/{self.checkpoint_prefix}/", _mount("checkpoints"), True)]
        env = contract_env(spec, _mount("run", CONFIG_FILE), inputs=inputs, output=_mount("output"),
                           checkpoint_dir=_mount("checkpoints"))
        self.env = {k: v for k, v in env.items() if k not in DLC_SETS}
        from .job_env import named_secrets

        present = [n for n in named_secrets(spec.config) if os.environ.get(n)]
        # Envs are the only way DLC hands a job a value, and they show in the job's description.
        if cfg.pass_secrets:
            self.env.update({n: os.environ[n] for n in present})
        self.withheld = [] if cfg.pass_secrets else present

    def image(self) -> str:
        """The job image: PAI pulls it from a registry, so it is named in the config, never guessed."""
        image = self.spec.image or self.cfg.image
        if not image:
            from ..pai.config import config_path

            raise UserError(f"--backend pai needs `image` in {config_path()}: a job image PAI can pull, e.g. "
                            "`pai-distil images build --target gpu --push REGISTRY`, then "
                            "`pai-distil config set image=REGISTRY/pai-distil-gpu:TAG`")
        return image

    def request(self):
        from ..pai.dlc import create_job_request

        return create_job_request(self.spec, self.cfg, self.image(), self.mounts, self.env)


def load_config(need_credentials: bool = True):
    from ..pai import config

    cfg = config.load()
    config.require(cfg, "oss_bucket")
    if not cfg.quota_id and not cfg.ecs_spec:
        raise UserError(f"--backend pai needs `ecs_spec` (public resources) or `quota_id` in {config.config_path()}; "
                        "set one with `pai-distil config set ecs_spec=ecs.gn7i-c8g1.2xlarge`")
    if need_credentials:
        from ..pai.credentials import chain

        chain()
    return cfg


def dry_run_body(spec: JobSpec) -> dict:
    """The CreateJob body `start` would send (nothing uploaded, no credentials needed)."""
    from ..masking import masked
    from ..pai.dlc import SECRET_MARK, request_body
    from .job_env import named_secrets

    plan = Plan(spec, load_config(need_credentials=False))
    names = [*named_secrets(spec.config), *CREDENTIAL_ENV]
    return masked(request_body(plan.request()), names=names, values=[os.environ.get(n) for n in names],
                  mark=SECRET_MARK)


class PaiBackend(ProcessBackend):
    name = "pai"

    def start(self, spec: JobSpec, record: RunRecord) -> RunRecord:
        console = Console(stderr=True)
        try:
            cfg = load_config()
            plan = Plan(spec, cfg)
            job_id = self._submit(spec, record, plan, console)
        except UserError as e:
            self.registry.update(record.id, where_state=ACTIVE, state="failed", error=e.message, finished_at=time.time())
            raise
        console.print(f"DLC job [bold]{job_id}[/] for run {record.id}")
        return self.spawn_supervisor(record, SUPERVISOR_MODULE, dict(os.environ))

    def _submit(self, spec: JobSpec, record: RunRecord, plan: Plan, console: Console) -> str:
        from ..pai import dlc
        from ..pai.oss import Storage, Transfer

        plan.image()  # a missing setting fails before anything is uploaded
        if plan.withheld:
            names = ", ".join(f"${n}" for n in plan.withheld)
            console.print(f"[yellow]warning:[/] the job is not handed {names} (its config's api_key_env): an "
                          "endpoint that needs it will refuse the job. `pai-distil config set pass_secrets=true` "
                          "hands it as a DLC Env, which workspace members can read")
        directory = run_dir(record.id)
        config_path = write_run_files(spec, directory)
        storage = Storage(plan.cfg, console)
        storage.ensure_bucket()
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
        (directory / JOB_FILE).write_text(json.dumps({
            "job_id": job_id, "config": plan.cfg.model_dump(mode="json"),
            "output_prefix": plan.output_prefix, "checkpoint_prefix": plan.checkpoint_prefix}, indent=1))
        return job_id


class PaiSupervisor(Supervisor):
    """Follows one DLC job: status changes and pod logs into the run's log, then the output home."""

    def __init__(self, run_id: str, registry: Registry):
        super().__init__(run_id, registry)
        self.client = None
        self.job_id = None
        self.stop_sent = False

    def run(self) -> None:
        from ..pai import dlc
        from ..pai.config import PaiConfig

        spec = JobSpec.model_validate_json((run_dir(self.run_id) / "spec.json").read_text())
        info = json.loads((run_dir(self.run_id) / JOB_FILE).read_text())
        record = self.registry.get(self.run_id)
        if record.terminal:
            return None
        self.registry.update(self.run_id, supervisor_pid=os.getpid())
        cfg = PaiConfig.model_validate(info["config"])
        self.client, self.job_id = dlc.client(cfg), info["job_id"]
        job = self.follow(spec)
        if job.status == "Stopped" or self.stop_requested:
            return self.finish("cancelled", error=f"DLC job {self.job_id} stopped")
        if job.status != "Succeeded":
            reason = job.reason_message or job.reason_code or "no reason given"
            return self.finish("failed", error=f"DLC job {self.job_id} {job.status.lower()}: {reason}", exit_code=1)
        from ..pai.oss import Storage

        storage = Storage(cfg, Console(file=sys.stdout, force_terminal=False, width=120))
        try:
            moved = storage.download(info["output_prefix"], Path(spec.output), "output")
        except UserError as e:
            return self.finish("failed", error=f"output of DLC job {self.job_id}: {e.message}", exit_code=1)
        self.note(moved.summary("downloaded"))
        if not artifacts.is_complete(spec.output):
            return self.finish("failed", error=NO_ARTIFACT, exit_code=0)
        return self.finish("succeeded", exit_code=0)

    def follow(self, spec: JobSpec):
        from ..pai import dlc

        seen: dict[str, int] = {}
        status, errors, started = None, 0, False
        for delay in dlc.backoff(0.5, 1.5, 5.0):
            if self.stop_requested and not self.stop_sent:
                self.note(f"cancel requested: stopping DLC job {self.job_id}")
                dlc.stop_job(self.client, self.job_id)
                self.stop_sent = True
            try:
                job = dlc.get_job(self.client, self.job_id)
                self.pump(job, seen)
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
            if status == "Running" and not started:
                started = True
                self.registry.update(self.run_id, where_state=ACTIVE, state="running", started_at=time.time())
            if status in dlc.TERMINAL:
                return job
            end = time.monotonic() + delay
            while time.monotonic() < end and not (self.stop_requested and not self.stop_sent):
                time.sleep(0.1)

    def pump(self, job, seen: dict[str, int]) -> None:
        """Append the pods' new log lines; several pods are told apart by a prefix."""
        from ..pai import dlc

        pods = job.pods or []
        for i, pod in enumerate(pods):
            lines = dlc.pod_logs(self.client, self.job_id, pod.pod_id)
            new = lines[seen.get(pod.pod_id, 0):]
            seen[pod.pod_id] = len(lines)
            prefix = f"[{pod.pod_id}] " if len(pods) > 1 else ""
            for line in new:
                shown = line if i == 0 and line.startswith("[progress] ") else prefix + line
                print(shown, flush=True)

    def kill_all(self) -> None:
        """The supervisor is going away: do not leave a job running on PAI unwatched."""
        if self.client is not None and self.job_id and not self.stop_sent:
            from ..pai import dlc

            try:
                dlc.stop_job(self.client, self.job_id)
            except UserError:
                pass


def main(argv: list[str] | None = None) -> int:
    return supervise(PaiSupervisor, SUPERVISOR_MODULE, argv)


if __name__ == "__main__":
    sys.exit(main())
