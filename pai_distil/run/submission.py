"""From a stage name, a config and inputs to a run: validation, cache key, job spec, backend.

Reruns are keyed by content: the stage, its validated config and the digests of its inputs.
The same key means the same work directory, so an interrupted job resumes from its
checkpoints, and a finished one is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console

from pai_distil import __version__, paths
from pai_distil.core import artifacts, hub_ids, model_refs, url_credentials
from pai_distil.run import sources, work_lock
from pai_distil.core.errors import RunFailed, UserError
from pai_distil.core.config import JobSpec, Resources, validate
from pai_distil.core.stages import CHECKPOINT_INPUTS, Stage, get_stage
from pai_distil.core.suggest import did_you_mean

WARN_BYTES = 2 << 30  # hashing an input larger than this, or of more files than WARN_FILES, is announced
WARN_FILES = 10_000
PROGRESS_S = 5.0  # and says how far it got this often
JOB_COMMAND = ["python", "-m", "pai_distil_jobs"]  # as the image runs it; the process backend runs this machine's python
WORK_MARKER = ".pai-distil-work"  # marks a work dir, whose output is unfinished until its manifest exists


@dataclass
class Prepared:
    stage: Stage
    config: BaseModel
    spec: JobSpec
    cache_key: str
    work_dir: Path


def needed_inputs(stage: Stage, config: BaseModel) -> tuple[set[str], set[str]]:
    """(required, allowed) input names of a stage with this config."""
    required = set(stage.inputs)
    allowed = required | set(stage.optional_inputs)
    if stage.open_inputs:  # evaluate: checkpoints named by its `models[].input`
        named = {m.input for m in getattr(config, "models", []) if getattr(m, "input", None)}
        required |= named
        allowed |= named
    if hasattr(config, "required_inputs"):  # inputs a config's settings make necessary
        required |= set(config.required_inputs())
    return required, allowed


def check_names(stage: Stage, config: BaseModel, names: set[str], where: str, hint: str = "pass --input {name}=PATH") -> None:
    required, allowed = needed_inputs(stage, config)
    if "problems" in names and getattr(config, "problems", None) is not None:
        raise UserError(f"{where}: input 'problems' would never be read: the config's `problems` draws them from the "
                        "synthetic world; remove `problems:` from the config to read the input, or drop the input")
    for name in sorted(names - allowed):  # first: `cot` for `cots` is a typo, not a missing `cots`
        close = did_you_mean(name, allowed - names)
        raise UserError(f"{where}: stage {stage.name} takes no input '{name}'{close}"
                        f"{' (its inputs: ' + ', '.join(sorted(allowed)) + ')' if allowed else ''}")
    for name in sorted(required - names):
        raise UserError(f"{where}: stage {stage.name} needs input '{name}'; " + hint.format(name=name))


def resolve_paths(inputs: dict[str, str], where: str) -> dict[str, str]:
    """Absolute paths of inputs, which must exist, not be an unfinished artifact, and hold what their
    manifest says: the cache key trusts an artifact's manifest for its content. A hub data set
    (`hf://`, `ms://`) is read into a file here first (`sources`)."""
    resolved = {}
    checked = artifacts.Checked(paths.checked_files())
    for name, raw in inputs.items():
        if raw.startswith("oss://"):  # an artifact in OSS (pai): checked there by its manifest, never copied
            resolved[name] = _remote_input(name, raw, where)
            continue
        if hub_ids.is_hub_ref(raw):  # a Hub or ModelScope data set: one JSONL file here, then as any file
            try:
                raw = str(sources.materialise(raw))
            except ValueError as e:
                raise UserError(f"{where}: input '{name}': {e}") from None
        p = Path(raw).expanduser()
        if not p.exists() and model_refs.RUN_ID.match(raw):
            raw = run_output(raw, name, where)
            if raw.startswith("oss://"):
                resolved[name] = _remote_input(name, raw, where)
                continue
            p = Path(raw)
        if not p.exists():
            raise UserError(f"{where}: input '{name}' path {raw!r} does not exist; check the path, or give a run id")
        if not (p.is_file() or p.is_dir()):  # /dev/null, a FIFO, a socket: nothing a job can read as data
            raise UserError(f"{where}: input '{name}' ({raw}) is neither a file nor a directory; pass a data file "
                            "or an artifact directory")
        if name in CHECKPOINT_INPUTS:
            try:
                model_refs.check_checkpoint(p)
            except ValueError as e:
                raise UserError(f"{where}: input '{name}': {e}") from None
        if p.is_dir() and (p.parent / WORK_MARKER).exists() and not artifacts.is_complete(p):
            raise UserError(f"{where}: input '{name}' ({raw}) is an unfinished artifact; rerun the stage that writes it")
        if p.is_dir() and artifacts.is_complete(p):
            try:
                artifacts.verify(p, checked)
            except UserError as e:
                raise UserError(f"{where}: input '{name}': {e.message}") from None
        resolved[name] = str(p.resolve())
    return resolved


def run_output(run_id: str, name: str, where: str) -> str:
    """The output of a finished run, named by its id as an input (`-i student=slow-thinking-2026...`)."""
    from pai_distil.run.registry import Registry

    try:
        record = Registry().get(run_id)
    except UserError as e:
        raise UserError(f"{where}: input '{name}': {e.message}") from None
    if record.state not in ("succeeded", "cached") or not record.output:
        raise UserError(f"{where}: input '{name}': run {record.id} is {record.state}; use it once it has succeeded")
    return record.output


_REMOTE_DIGESTS: dict[str, str] = {}  # oss:// input -> digest of its manifest, as artifacts.digest gives it


def _remote_input(name: str, uri: str, where: str) -> str:
    from pai_distil.backends.pai import remote_artifact

    uri = uri.rstrip("/") + "/"
    try:
        manifest = remote_artifact(uri)
    except UserError as e:
        raise UserError(f"{where}: input '{name}': {e.message}") from None
    _REMOTE_DIGESTS[uri] = artifacts.manifest_digest(manifest)
    return uri


def input_digest(source: str, name: str = "") -> str:
    """The content digest of an input: a local path's, or an OSS artifact's from its manifest (the same
    digest as the artifact's local copy has, so a pulled output keeps its cache key)."""
    if source.startswith("oss://"):
        return _REMOTE_DIGESTS[source]
    return artifacts.digest(source, _HashProgress.of(name, source))


class _HashProgress:
    """Hashing an input past WARN_BYTES or WARN_FILES (a folder given by mistake, say all of /tmp)
    is announced, then shows how far it got every PROGRESS_S, on stderr: the cache key reads every
    byte of an input without a manifest."""

    def __init__(self, name: str, total: int, console: Console):
        self.name, self.total, self.console = name, total, console
        self.done, self.shown = 0, time.monotonic()

    @classmethod
    def of(cls, name: str, source: str) -> _HashProgress | None:
        files = artifacts.hashed_files(source)
        if len(files) <= WARN_FILES and sum(f.stat().st_size for f in files[:WARN_FILES]) <= WARN_BYTES:
            return None
        total = sum(f.stat().st_size for f in files)
        console = Console(stderr=True)
        console.print(f"[yellow]warning:[/] input '{name}' ({source}) holds {len(files)} file(s), {_gb(total)} GB, "
                      "and no manifest.json: hashing all of it for the cache key; pass the data file itself or an "
                      "artifact folder if this is not the data", soft_wrap=True)
        return cls(name, total, console)

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.shown >= PROGRESS_S:
            self.shown = time.monotonic()
            self.console.print(f"hashing input '{self.name}': {_gb(self.done)} of {_gb(self.total)} GB "
                               f"({100 * self.done // max(1, self.total)} %)", soft_wrap=True)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}"


def cache_key(stage: str, config: BaseModel, inputs: dict[str, str]) -> str:
    body = {
        "version": __version__,
        "stage": stage,
        "config": url_credentials.split(config.model_dump(mode="json"))[0],  # a new password is no new work
        "inputs": {n: input_digest(p, n) for n, p in sorted(inputs.items())},
    }
    models = model_refs.local_digests(body["config"])  # a checkpoint edited in place is new work
    if models:
        body["models"] = models
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_scale(stage: Stage, config: BaseModel, nodes: int, procs_per_node: int | None, resources: Resources,
                where: str) -> None:
    """Refuse, in one line, a job shape that would go wrong once it runs (see check_nodes, check_batch)."""
    check_nodes(stage, nodes, where)
    check_batch(stage, config, nodes, procs_per_node, resources, where)


def check_nodes(stage: Stage, nodes: int, where: str) -> None:
    """Several nodes for a stage that runs in one process: every node would run the whole stage into the
    same output."""
    if nodes > 1 and not stage.distributed:
        from pai_distil.core.stages import STAGES

        several = ", ".join(s.name for s in STAGES.values() if s.distributed)
        raise UserError(f"{where}: stage {stage.name} runs in one process, so --nodes {nodes} would run it {nodes} "
                        f"times into the same output; use --nodes 1 (stages that run on several nodes: {several})")


def check_batch(stage: Stage, config: BaseModel, nodes: int, procs_per_node: int | None, resources: Resources,
                where: str) -> None:
    """Fewer sequences per optimizer step than processes: the extra ranks would get empty batches. The
    processes per node are the ones asked for, else the node's GPUs (as DLC starts them), else one."""
    world = nodes * (procs_per_node or resources.gpu or 1)
    batch = getattr(getattr(config, "train", None), "batch_size", None)
    if stage.distributed and batch is not None and batch < world:
        raise UserError(f"{where}: train.batch_size {batch} is below the {world} processes of {nodes} node(s) x "
                        f"{world // nodes}; set train.batch_size to at least {world} or use fewer nodes or processes")


def prepare(stage_name: str, config_data: dict, inputs: dict[str, str], *, where: str,
            nodes: int = 1, procs_per_node: int | None = None, resources: Resources | None = None,
            backend: str = "process") -> Prepared:
    """Validate everything (for the job `backend` will run) and build the job spec; starts nothing."""
    from pai_distil.run.checks import check_stage
    from pai_distil.run.registry import new_run_id

    stage = get_stage(stage_name)
    check_nodes(stage, nodes, where)
    config = validate(stage.config, config_data, where)
    check_stage(stage.name, config, where, backend)
    resources = resources or Resources()
    check_batch(stage, config, nodes, procs_per_node, resources, where)
    check_names(stage, config, set(inputs), where)
    resolved = resolve_paths(inputs, where)
    key = cache_key(stage.name, config, resolved)
    work = paths.work_dir(stage.name, key)
    spec = JobSpec(
        run_id=new_run_id(stage.name), stage=stage.name, command=list(JOB_COMMAND),
        config=_without_passwords(config), inputs=resolved,
        output=str(work / "output"), checkpoint_dir=str(work / "checkpoints"),
        nodes=nodes, procs_per_node=procs_per_node, resources=resources,
    )
    return Prepared(stage, config, spec, key, work)


def _without_passwords(config: BaseModel) -> dict:
    """The config as the job gets it: URL passwords masked, handed on in this process's environment,
    which the backend passes to the job as it does `api_key_env` keys (core.url_credentials)."""
    data, passwords = url_credentials.split(config.model_dump(mode="json"))
    os.environ.update(passwords)
    return data


def execute(prep: Prepared, backend: str, *, force: bool = False, detach: bool = False,
            pipeline: str | None = None, console: Console | None = None, **options):
    """Run a prepared job (or reuse a cached result); returns the run record. `options` are the
    backend's own (pai: download, max_restarts)."""
    from pai_distil.backends import get_backend
    from pai_distil.run.follow import follow
    from pai_distil.run.registry import Registry

    console = console or Console(stderr=True)
    registry = Registry()
    runner = get_backend(backend, **options)
    spec = prep.spec
    if not force:
        hit = registry.find_succeeded(prep.cache_key)
        if hit is not None and not _intact(hit.output, console):
            hit = None
        if hit is not None:
            record = registry.create(spec.run_id, spec.stage, backend, prep.cache_key, str(prep.work_dir),
                                     hit.output, hit.log_path, pipeline=pipeline, state="cached")
            console.print(f"[green]cache hit[/]: {spec.stage} unchanged since run {hit.id}; reusing {hit.output} (--force reruns)", soft_wrap=True)
            if options.get("download") and (hit.output or "").startswith("oss://"):  # wanted here, still in OSS
                from pai_distil.backends.pai import pull_output

                pull_output(record, registry=registry)
                record = registry.get(record.id)
            return record
    _take_work_dir(registry, prep, console)
    previous = _set_aside(prep.work_dir) if force else None
    try:
        output = Path(spec.output)
        output.mkdir(parents=True, exist_ok=True)
        (output.parent / WORK_MARKER).touch()
        (output / artifacts.MANIFEST).unlink(missing_ok=True)  # a rerun is incomplete until it finishes
        log_path = paths.run_dir(spec.run_id) / "job.log"
        record = registry.create(spec.run_id, spec.stage, backend, prep.cache_key, str(prep.work_dir),
                                 spec.output, str(log_path), pipeline=pipeline)
        runner.start(spec, record)  # the supervisor now holds the work dir's lock too
    except BaseException:
        if previous is not None:  # the run never started: the earlier output is still the work's result
            shutil.rmtree(prep.work_dir, ignore_errors=True)
            os.replace(previous, prep.work_dir)
        raise
    finally:
        work_lock.release(prep.work_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    if detach:
        console.print(f"submitted run [bold]{spec.run_id}[/]; follow it with `pai-distil runs logs -f {spec.run_id}`")
        return record
    console.print(f"run [bold]{spec.run_id}[/] ({spec.stage}, backend {backend})")
    record = follow(spec.run_id, registry=registry, console=console)
    if record.state != "succeeded":
        reason = record.error or f"exit code {record.exit_code}"
        raise RunFailed(f"run {record.id} ({record.stage}) {record.state}: {reason}")
    console.print(f"[green]done[/]: {record.stage} → {record.output}", soft_wrap=True)
    return record


def _set_aside(work_dir: Path) -> Path | None:
    """`--force`: move the work dir's earlier output and checkpoints beside it, to be removed once the
    new run has started, or put back when it cannot start (no Docker engine, a missing PAI setting)."""
    if not work_dir.exists():
        return None
    aside = work_dir.with_name(f".{work_dir.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)  # left by a client killed between the two moves
    os.replace(work_dir, aside)
    return aside


def _take_work_dir(registry, prep: Prepared, console: Console) -> None:
    """Hold the work dir's lock for this run; a job left running by a dead supervisor is stopped first
    (it saves a checkpoint, which this run resumes from). Refuses, naming it, a run still running."""
    try:
        work_lock.hold(prep.work_dir, prep.spec.run_id)
        return
    except UserError:
        other = (work_lock.holder(prep.work_dir) or {}).get("run_id")
        try:
            record = registry.get(other) if other else None
        except UserError:  # a run of another registry (another home): not ours to stop
            record = None
        if record is None or not record.terminal:
            raise
    console.print(f"run {record.id} is {record.state} but its job still runs without its supervisor; stopping it",
                  soft_wrap=True)
    work_lock.stop_orphan(prep.work_dir)
    work_lock.hold(prep.work_dir, prep.spec.run_id)


def _intact(output: str, console: Console) -> bool:
    """Whether a cached output still holds what its manifest says; an edited one is run again."""
    try:
        if output.startswith("oss://"):
            from pai_distil.backends.pai import remote_artifact

            remote_artifact(output)
            return True
        artifacts.verify(output, artifacts.Checked(paths.checked_files()))
    except UserError as e:
        console.print(f"[yellow]not a cache hit[/]: {e.message}", soft_wrap=True)
        return False
    return True


def parse_inputs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--input {pair!r} must look like NAME=PATH, e.g. --input cots=./cots.jsonl")
        name = name.strip()
        if name in out:
            raise UserError(f"--input {name} is given twice ({out[name]} and {path.strip()}); give each input once")
        out[name] = path.strip()
    return out
