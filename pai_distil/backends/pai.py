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
checkpoints; the attempts are kept in the run's `dlc-job.json`. The supervisor lives in
`pai_supervisor` and never stops a job on its own (see there); `runs cancel` does, by the saved job id
even when no supervisor is alive, and Ctrl-C on an attached submit only detaches.

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
from pathlib import Path, PurePosixPath

from rich.console import Console

from pai_distil.core import artifacts
from pai_distil.core.config import JobSpec
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry, RunRecord

from ..paths import run_dir
from .base import CONFIG_FILE, Backend
from .job_env import contract_env, named_secrets, secrets

SUPERVISOR_MODULE = "pai_distil.backends.pai_supervisor"
JOB_FILE = "dlc-job.json"
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
        self.options: dict = {}  # create_job_request's settings from pre-flight and the CLI (driver, limits)

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

    def request(self, attempt: int = 1, **options):
        """The CreateJob request; `options` are create_job_request's production settings (driver, limits)."""
        from pai_distil.cloud.pai.dlc import create_job_request

        return create_job_request(self.spec, self.cfg, self.image(), self.mounts, self.env, attempt=attempt,
                                  **{**self.options, **options})


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


def preflight(plan: Plan, console: Console, no_preflight: bool = False, price_per_hour: float | None = None,
              max_runtime: int | None = None, no_plan: bool = False) -> None:
    """The node checks (cloud.pai.preflight), the stage's `pai-distil plan` on the node's GPUs and the cost
    line, before anything is uploaded; what they decide (the GPU driver, the node's GPUs, the run-time
    limit) goes into `plan.options`."""
    from pai_distil.cloud.pai import dlc, preflight as pf

    gpu_hours = peak_gib = None
    node = None
    if max_runtime:
        plan.options["max_running_minutes"] = max_runtime
    if not no_preflight:
        if not plan.cfg.quota_id:
            ecs = plan.spec.resources.instance_type or plan.cfg.ecs_spec
            node = pf.node_type(dlc.client(plan.cfg), ecs)
            if node is None:
                from pai_distil.cloud.pai.config import ECS_SPEC_EXAMPLE

                raise UserError(f"ecs_spec {ecs} is not an instance type DLC offers in {plan.cfg.region} "
                                f"(ListEcsSpecs): choose one it lists, e.g. --ecs-spec {ECS_SPEC_EXAMPLE}")
    if not no_plan:
        gpu_hours, peak_gib = _stage_plan(plan.spec, node, console)
    if not no_preflight:
        checked = pf.check_nodes(plan.spec, plan.cfg, node, peak_gib)
        plan.options.update(driver=checked.driver, node_gpus=node.gpus if node else None)
    console.print(pf.cost_line(plan.spec, node, gpu_hours, price_per_hour), soft_wrap=True)
    hours = pf.wall_hours(plan.spec, node, gpu_hours)
    if not max_runtime and not plan.cfg.max_running_minutes and hours is not None:
        limit = plan.options["max_running_minutes"] = pf.runtime_limit(hours)
        console.print(f"max runtime: {limit} min ({pf.RUNTIME_HEADROOM} × the plan's {hours:.2f} h + 1 h, at least "
                      f"{pf.RUNTIME_FLOOR_MINUTES}); --max-runtime MINUTES sets it", soft_wrap=True)


def _stage_plan(spec: JobSpec, node, console: Console) -> tuple[float | None, float | None]:
    """(GPU-hours, per-GPU peak GiB) of a training stage on `node`'s GPUs (`pai-distil plan`); a step that
    does not fit is refused here, naming the knob. A preset (a test model) or a model the plan cannot size
    (a checkpoint only in OSS) is not planned, and the console says so."""
    from pai_distil.core.presets import is_preset
    from pai_distil.run.plan import GPUS, TRAINING, gpu_spec, plan_stage, refusal, trained_model

    if spec.stage not in TRAINING or is_preset(str(trained_model(spec.stage, spec.config, spec.inputs))):
        return None, None
    gpus = spec.procs_per_node or (node.gpus if node else None) or spec.resources.gpu or 1
    kind = (node.gpu_type or "").lower() if node else ""
    name = next((g for g in GPUS if g in kind), "h800")
    memory = node.gpu_memory_gib if node and node.gpu_memory_gib else None
    try:
        result = plan_stage(spec.stage, spec.config, spec.inputs, nodes=spec.nodes, gpus=gpus,
                            gpu=gpu_spec(name, memory), where=f"{spec.stage} config")
    except UserError as e:
        console.print(f"plan skipped: {e.message}")
        return None, None
    if not result["fits"]:
        raise UserError(refusal(result) + "; or pass --no-plan to submit anyway")
    console.print(f"plan: {result['peak_gib']:.1f} GiB per GPU of {result['budget_gib']:g} ({result['sharding']}), "
                  f"{result['step_seconds']:.1f} s a step at MFU {result['mfu']:g}, {result['gpu_hours']:,.1f} GPU-hours",
                  soft_wrap=True)
    return result["gpu_hours"], result["peak_gib"]


def dry_run_body(spec: JobSpec, no_preflight: bool = False, price_per_hour: float | None = None,
                 max_runtime: int | None = None, no_plan: bool = False) -> dict:
    """The CreateJob body `start` would send (nothing uploaded); pre-flight runs when credentials are there."""
    from ..masking import masked
    from pai_distil.cloud.pai.dlc import SECRET_MARK, request_body

    plan = Plan(spec, load_config(need_credentials=False))
    console = Console(stderr=True)
    if not no_preflight:
        try:
            from pai_distil.cloud.pai.credentials import chain

            chain()
        except UserError:
            console.print("pre-flight skipped: no credentials to call ListEcsSpecs with")
            no_preflight = True
    preflight(plan, console, no_preflight, price_per_hour, max_runtime, no_plan)
    names = [*named_secrets(spec.config), *CREDENTIAL_ENV]
    return masked(request_body(plan.request()), names=names, values=[os.environ.get(n) for n in names],
                  mark=SECRET_MARK)


class PaiBackend(Backend):
    name = "pai"
    supervisor_module = SUPERVISOR_MODULE
    job_outlives_supervisor = True
    options = ("download", "max_restarts", "no_preflight", "price_per_hour", "max_runtime", "no_plan")

    @classmethod
    def hands_secrets(cls) -> bool:
        """Only with `pass_secrets` on: DLC shows a job's variables in its description."""
        from pai_distil.cloud.pai import config

        return config.load().pass_secrets

    def __init__(self, registry: Registry | None = None, download: bool | None = None,
                 max_restarts: int | None = None, no_preflight: bool = False, price_per_hour: float | None = None,
                 max_runtime: int | None = None, no_plan: bool = False):
        super().__init__(registry)
        self.no_plan = no_plan
        self.download, self.max_restarts = bool(download), max_restarts
        self.no_preflight, self.price_per_hour, self.max_runtime = no_preflight, price_per_hour, max_runtime
        self.console = Console(stderr=True)
        self._plan: Plan | None = None  # from _prepare to _launch of one start

    def _prepare(self, spec: JobSpec) -> JobSpec:
        plan = Plan(spec, load_config())
        spec = spec.model_copy(update={"image": plan.image()})  # a missing setting fails before anything is uploaded
        plan.spec, self._plan = spec, plan
        preflight(plan, self.console, self.no_preflight, self.price_per_hour, self.max_runtime, self.no_plan)
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
            console.print(f"[yellow]warning:[/] the job is not handed {names} (its config's api_key_env, or a password in a URL): an "
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
            "request_options": plan.options, "max_runtime_minutes": self.max_runtime,
            "attempts": [{"job_id": job_id, "status": "Submitted", "reason": ""}]})
        return job_id

    def _cancelled(self, record: RunRecord) -> None:
        """StopJob by the saved job id, unless the job already ended: a supervisor that died (or was never
        reattached) leaves a cancelled run's DLC job to be stopped here."""
        from pai_distil.cloud.pai import dlc
        from pai_distil.cloud.pai.config import PaiConfig

        info = read_job_info(record.id)
        if not info or record.state != "cancelled":
            return
        client = dlc.client(PaiConfig.model_validate(info["config"]))
        if dlc.get_job(client, info["job_id"]).status not in (*dlc.TERMINAL, "Stopping"):
            dlc.stop_job(client, info["job_id"])
            self.console.print(f"stopped DLC job {info['job_id']}")

    def tensorboard(self, record: RunRecord) -> tuple[Path | None, str | None]:
        """A pulled output's event files are here; else the DLC job's page in the PAI console, whose
        TensorBoard reads the event files in OSS."""
        if record.output and not record.output.startswith("oss://"):
            return super().tensorboard(record)
        info = read_job_info(record.id)
        if not info:
            return None, None
        cfg, job = info["config"], info["job_id"]
        query = f"regionId={cfg['region']}" + (f"&workspaceId={cfg['workspace_id']}" if cfg.get("workspace_id") else "")
        return None, (f"DLC job {job}: open TensorBoard from its page, https://pai.console.aliyun.com/?{query}#/dlc/"
                      f"jobs/{job}, on the event files in oss://{cfg['oss_bucket']}/{info['output_prefix']}/tensorboard/ "
                      f"(or `pai-distil runs pull {record.id}`, then `pai-distil runs tensorboard {record.id}` here)")


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
