"""The `local` backend: a job runs as Docker containers on this machine, one per node.

Same contract as `process` and `pai`: the job image runs `python -m pai_distil_jobs` with the
contract variables, pointing at container paths. Inputs are mounted read-only, the output and
checkpoint dirs read-write, and the job runs as a non-root user. Networking:

- one node of a stage that calls no endpoint: `--network none`;
- a stage whose config names an endpoint (`base_url`: generate, score, evaluate of a served
  model): the host network, so a teacher on 127.0.0.1 is reachable;
- several nodes: the host network, `MASTER_ADDR=127.0.0.1`, so torchrun forms one group.

Secrets (only those the config names, see `job_env`) reach containers as `docker run -e NAME`
(no value on any command line; the docker client takes it from its own environment), and
containers are removed when they end.

`start` spawns a detached supervisor (`python -m pai_distil.backends.local RUN_ID REGISTRY`)
that runs the `docker run` clients, prefixes every line with its node (several nodes), and
records the outcome with the `process` backend's rules.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

from pai_distil.core import dockercli
from pai_distil.core.artifacts import is_complete
from pai_distil.core.errors import UserError
from ..paths import run_dir
from pai_distil.run.registry import ACTIVE, Registry, RunRecord
from pai_distil.core.config import JobSpec
from .job_env import named_secrets
from .process import CONFIG_FILE, ProcessBackend, contract_env, free_port, write_run_files
from .supervisor import NO_ARTIFACT, Supervisor, supervise

SUPERVISOR_MODULE = "pai_distil.backends.local"
MOUNT = PurePosixPath("/pai")
IMAGE_UID = 1000  # the image's `pai` user, for jobs started by root
TAIL_LINES = 20  # a failed node's last lines, copied into the log's closing note
SEARCH_LINES = 400  # where its `pai-distil job error:` line is looked for
DOCKER_FAILED = 125  # `docker run` itself failed (image, mounts, engine)


def container_name(run_id: str, rank: int) -> str:
    return f"pai-distil-{run_id}-node{rank}"


def needs_endpoints(config: dict) -> bool:
    """Whether the stage talks to an HTTP endpoint (a teacher, a judge, a served model)."""
    if isinstance(config, dict):
        return any(k == "base_url" or needs_endpoints(v) for k, v in config.items())
    if isinstance(config, list):
        return any(needs_endpoints(v) for v in config)
    return False


def container_user() -> str | None:
    """Files written to bind mounts belong to the invoking user; root's jobs run as the image's user."""
    uid = os.geteuid()
    return None if uid == 0 else f"{uid}:{os.getegid()}"


def _container_command(command: list[str]) -> list[str]:
    """The job command inside the image: the host's Python path becomes the image's `python`."""
    if command and Path(command[0]).name.startswith("python"):
        return ["python", *command[1:]]
    return list(command)


def docker_argv(spec: JobSpec, image: str, rank: int, master_port: int, config_path: Path) -> list[str]:
    """`docker run ...` for one node of the job (no secret values: `-e NAME` only)."""
    inputs, mounts = {}, []
    for name, host in sorted(spec.inputs.items()):
        host_path = Path(host)
        where = MOUNT / "inputs" / name
        if host_path.is_file():  # keep the file name: formats are told by the suffix
            where = where / host_path.name
        inputs[name] = str(where)
        mounts.append(f"type=bind,source={host_path},target={where},readonly")
    mounts += [f"type=bind,source={spec.output},target={MOUNT / 'output'}",
               f"type=bind,source={spec.checkpoint_dir},target={MOUNT / 'checkpoints'}",
               f"type=bind,source={config_path},target={MOUNT / 'run' / CONFIG_FILE},readonly"]
    env = contract_env(spec, MOUNT / "run" / CONFIG_FILE, master_addr="127.0.0.1", master_port=master_port,
                       rank=rank, inputs=inputs, output=str(MOUNT / "output"),
                       checkpoint_dir=str(MOUNT / "checkpoints"))
    env["HOME"] = "/tmp"  # writable whatever uid the job runs as
    host_net = spec.nodes > 1 or needs_endpoints(spec.config)
    argv = ["run", "--rm", "--init", "--name", container_name(spec.run_id, rank),
            "--label", f"pai-distil.run={spec.run_id}", "--label", f"pai-distil.node={rank}",
            "--network", "host" if host_net else "none", "--shm-size", "1g"]
    user = container_user()
    if user:
        argv += ["--user", user]
    if spec.resources.cpu:
        argv += ["--cpus", str(spec.resources.cpu)]
    if spec.resources.memory_gb:
        argv += ["--memory", f"{int(spec.resources.memory_gb * 1024)}m"]
    if spec.resources.gpu:
        argv += ["--gpus", str(spec.resources.gpu)]
    for m in mounts:
        argv += ["--mount", m]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    for name in named_secrets(spec.config):
        if name in os.environ and name not in env:
            argv += ["-e", name]  # the value comes from the docker client's environment
    return argv + [image, *_container_command(spec.command)]


def remove_containers(run_id: str) -> None:
    """Remove every container of a run, running or not (idempotent)."""
    proc = dockercli.docker("ps", "-aq", "--filter", f"label=pai-distil.run={run_id}", check=False)
    ids = proc.stdout.split()
    if ids:
        dockercli.docker("rm", "-f", *ids, check=False)


class LocalBackend(ProcessBackend):
    name = "local"

    def start(self, spec: JobSpec, record: RunRecord) -> RunRecord:
        try:
            dockercli.require_engine()
            from pai_distil.cloud.images import default_image

            image = spec.image or default_image()
            if not dockercli.image_id(image):
                raise UserError(f"image {image} does not exist here; build it with `pai-distil images build` "
                                "or `docker pull` it")
        except UserError as e:
            self.registry.update(record.id, where_state=ACTIVE, state="failed", error=e.message, finished_at=time.time())
            raise
        spec = spec.model_copy(update={"image": image})
        write_run_files(spec, run_dir(record.id))
        for d in (spec.output, spec.checkpoint_dir):
            _writable_dir(Path(d))
        return self.spawn_supervisor(record, SUPERVISOR_MODULE, dict(os.environ))

    def cancel(self, record: RunRecord, wait_s: float | None = None) -> RunRecord:
        record = super().cancel(record, **({} if wait_s is None else {"wait_s": wait_s}))
        remove_containers(record.id)  # whatever the supervisor managed, no container outlives a cancel
        return record


def _writable_dir(path: Path) -> None:
    """Create a bind-mounted dir; when root starts the job, hand it to the image's user."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            try:
                os.chown(p, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
            except OSError:
                pass


class ContainerSupervisor(Supervisor):
    """Runs one `docker run` client per node; stops, kills and removes containers by name."""

    def __init__(self, run_id: str, registry: Registry):
        super().__init__(run_id, registry)
        self.names: list[str] = []
        self.tails: list[collections.deque] = []
        self.ended: list[float | None] = []
        self.threads: list[threading.Thread] = []
        self.log_lock = threading.Lock()

    def run(self) -> None:
        spec = JobSpec.model_validate_json((run_dir(self.run_id) / "spec.json").read_text())
        record = self.registry.get(self.run_id)
        if record.terminal:
            return None
        self.registry.update(self.run_id, supervisor_pid=os.getpid())
        if self.stop_requested:
            return self.finish("cancelled")
        net = "host" if spec.nodes > 1 or needs_endpoints(spec.config) else "none"
        self.note(f"{spec.nodes} container(s) of {spec.image}, network {net}")
        try:
            self.launch(spec, record.log_path)
        except OSError as e:
            self.kill_all()
            return self.finish("failed", error=f"cannot run docker: {e.strerror or e}")
        self.registry.update(self.run_id, where_state=ACTIVE, state="running", started_at=time.time(),
                             job_pid=self.procs[0].pid)
        self.wait()
        self.kill_all()
        codes = [p.returncode for p in self.procs]
        if self.stop_requested:
            return self.finish("cancelled", exit_code=next((c for c in codes if c), 0))
        failed = [i for i, c in enumerate(codes) if c]
        if not failed:
            if is_complete(spec.output):
                return self.finish("succeeded", exit_code=0)
            return self.finish("failed", error=NO_ARTIFACT, exit_code=0)
        first = min(failed, key=lambda i: self.ended[i] or float("inf"))
        return self.finish("failed", error=self.explain(spec, first, codes[first], record.log_path),
                           exit_code=codes[first])

    def explain(self, spec: JobSpec, rank: int, code: int, log_path: str) -> str:
        """One line: which node failed and why; its last lines go to the run's log."""
        lines = list(self.tails[rank])
        tail = lines[-TAIL_LINES:]
        if spec.nodes > 1:
            self.note(f"node {rank} failed with exit code {code}; its last lines:")
            with self.log_lock, open(log_path, "a") as log:
                log.writelines(f"  {line}\n" for line in tail)
        own = error_line_of(lines)
        if code == DOCKER_FAILED and not any("pai-distil" in line for line in lines):
            why = f"docker could not run the container: {own or 'exit code 125'}"
        elif code == 137:
            why = "killed (SIGKILL: `docker kill`, or out of memory)" + (f"; last line: {own}" if own else "")
        else:
            why = own or f"job exited with code {code}"
        return f"node {rank}: {why}" if spec.nodes > 1 else why

    def launch(self, spec: JobSpec, log_path: str) -> None:
        config_path = run_dir(self.run_id) / CONFIG_FILE
        port = free_port()
        for rank in range(spec.nodes):
            name = container_name(spec.run_id, rank)
            proc = subprocess.Popen([dockercli.binary(), *docker_argv(spec, spec.image, rank, port, config_path)],
                                    env=dockercli.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.lock_fds)
            self.names.append(name)
            self.procs.append(proc)
            self.tails.append(collections.deque(maxlen=SEARCH_LINES))
            self.ended.append(None)
            prefix = f"[node-{rank}] " if spec.nodes > 1 else ""
            t = threading.Thread(target=self.pump, args=(rank, proc, prefix, log_path), daemon=True)
            t.start()
            self.threads.append(t)
        self.job_holds_lock()  # each `docker run` client lives as long as its container

    def pump(self, rank: int, proc: subprocess.Popen, prefix: str, log_path: str) -> None:
        """Copy a node's output into the run's log, line by line, with its prefix."""
        with open(log_path, "ab") as log:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.tails[rank].append(line)
                # progress bars of node 0 stay unprefixed so `runs logs -f` can draw them
                shown = line if rank == 0 and line.startswith("[progress] ") else prefix + line
                with self.log_lock:
                    log.write((shown + "\n").encode())
                    log.flush()
        proc.wait()
        self.ended[rank] = time.monotonic()

    def signal_all(self, sig: int) -> None:
        flag = "KILL" if sig == signal.SIGKILL else "TERM"
        for name, p in zip(self.names, self.procs):
            if p.poll() is None:
                dockercli.docker("kill", "--signal", flag, name, check=False)

    def kill_all(self) -> None:
        remove_containers(self.run_id)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self.threads:
            t.join(timeout=10)


def error_line_of(lines: list[str]) -> str | None:
    """As the process backend's `error_line`, over one node's lines."""
    from pai_distil.core.contract import ERROR_PREFIX

    for line in reversed(lines):
        if ERROR_PREFIX in line:
            return line.split(ERROR_PREFIX, 1)[1].strip() or line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), None)


def main(argv: list[str] | None = None) -> int:
    return supervise(ContainerSupervisor, "pai_distil.backends.local", argv)


if __name__ == "__main__":
    sys.exit(main())
