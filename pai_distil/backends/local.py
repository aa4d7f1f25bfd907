"""The `local` backend: a job runs as Docker containers on this machine, one per node.

Same contract as `process` and `pai`: the job image runs the spec's command (`python -m
pai_distil_jobs`, the image's interpreter) with the contract variables, pointing at container paths. Inputs are mounted read-only, the output and
checkpoint dirs read-write, and the job runs as a non-root user. Networking:

- one node of a stage that calls no endpoint: `--network none`;
- a stage whose config names an endpoint (`base_url`: generate, score, evaluate of a served
  model): the host network, so a teacher on 127.0.0.1 is reachable;
- several nodes: the host network, `MASTER_ADDR=127.0.0.1`, so torchrun forms one group.

Secrets (only those the config names, see `job_env`) reach containers as `docker run -e NAME`
(no value on any command line; the docker client takes it from its own environment), and
containers are removed when they end.

`start` checks the engine and the image (the images default unless the spec names one), then
spawns a detached supervisor (`python -m pai_distil.backends.local RUN_ID REGISTRY`) that runs the
`docker run` clients, prefixes every line with its node (several nodes), and records the outcome
with the `process` backend's rules.
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
from pai_distil.core.config import JobSpec
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry, RunRecord

from ..paths import run_dir
from .base import CONFIG_FILE, Backend, free_port
from .containers import container_user, writable_dir
from .job_env import contract_env, secrets
from .supervisor import Supervisor, error_line, supervise

SUPERVISOR_MODULE = "pai_distil.backends.local"
MOUNT = PurePosixPath("/pai")
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
    for name in secrets(spec.config):
        if name not in env:
            argv += ["-e", name]  # the value comes from the docker client's environment
    return argv + [image, *spec.command]


def remove_containers(run_id: str) -> None:
    """Remove every container of a run, running or not (idempotent)."""
    proc = dockercli.docker("ps", "-aq", "--filter", f"label=pai-distil.run={run_id}", check=False)
    ids = proc.stdout.split()
    if ids:
        dockercli.docker("rm", "-f", *ids, check=False)


class LocalBackend(Backend):
    name = "local"
    supervisor_module = SUPERVISOR_MODULE

    def _prepare(self, spec: JobSpec) -> JobSpec:
        dockercli.require_engine()
        from pai_distil.cloud.images import default_image

        image = spec.image or default_image()
        if not dockercli.image_id(image):
            raise UserError(f"image {image} does not exist here; build it with `pai-distil images build` "
                            "or `docker pull` it")
        return spec.model_copy(update={"image": image})

    def _launch(self, spec: JobSpec, record: RunRecord, config_path: Path) -> dict[str, str]:
        for d in (spec.output, spec.checkpoint_dir):
            writable_dir(Path(d))
        return dict(os.environ)  # the docker client's: the secrets' values come from it (`-e NAME`)

    def _cancelled(self, record: RunRecord) -> None:
        remove_containers(record.id)  # whatever the supervisor managed, no container outlives a cancel


BACKEND = LocalBackend


class ContainerSupervisor(Supervisor):
    """Runs one `docker run` client per node; stops, kills and removes containers by name."""

    def __init__(self, run_id: str, registry: Registry):
        super().__init__(run_id, registry)
        self.names: list[str] = []
        self.tails: list[collections.deque] = []
        self.ended: list[float | None] = []
        self.threads: list[threading.Thread] = []
        self.log_lock = threading.Lock()

    def launch_error(self, spec: JobSpec, e: OSError) -> str:
        return f"cannot run docker: {e.strerror or e}"

    def collect(self, spec: JobSpec, record: RunRecord, first_bad: int | None) -> None:
        codes = [p.returncode for p in self.procs]
        if self.stop_requested:
            return self.finish("cancelled", exit_code=next((c for c in codes if c), 0))
        failed = [i for i, c in enumerate(codes) if c]
        if not failed:
            return self.finish_output(spec.output)
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
        own = error_line(lines)
        if code == DOCKER_FAILED and not any("pai-distil" in line for line in lines):
            why = f"docker could not run the container: {own or 'exit code 125'}"
        elif code == 137:
            why = "killed (SIGKILL: `docker kill`, or out of memory)" + (f"; last line: {own}" if own else "")
        else:
            why = own or f"job exited with code {code}"
        return f"node {rank}: {why}" if spec.nodes > 1 else why

    def launch(self, spec: JobSpec, record: RunRecord) -> None:
        net = "host" if spec.nodes > 1 or needs_endpoints(spec.config) else "none"
        self.note(f"{spec.nodes} container(s) of {spec.image}, network {net}")
        log_path = record.log_path
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
        self.running(job_pid=self.procs[0].pid)

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

    def stop(self, sig: int) -> None:
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


def main(argv: list[str] | None = None) -> int:
    return supervise(ContainerSupervisor, "pai_distil.backends.local", argv)


if __name__ == "__main__":
    sys.exit(main())
