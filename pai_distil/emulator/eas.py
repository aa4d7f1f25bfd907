"""PAI-EAS in the emulator: the service API of alibabacloud-eas20210701, and services that really serve.

API (ROA, signature verified like every POP API here): CreateService `POST /api/v2/services`,
ListServices `GET /api/v2/services`, DescribeService / UpdateService / DeleteService on
`/api/v2/services/{ClusterId}/{ServiceName}`, with EAS's status values (Creating, Updating,
Running, Failed, Deleting). The body is the EAS service config, validated as EAS would.

Each service version runs as `pai-distil deploy local` processes (one per `metadata.instance`):
the checkpoint is copied out of the emulator's OSS from the config's `storage` mount, and the
engine's start command (vLLM's `vllm serve`, SGLang's `launch_server`) is read for the model
path and `--served-model-name`. A reward model's command (`pai-distil reward serve PATH ...`, in
the job image) runs as it is, on a local port, with the container's `env`. Clients call the stable endpoint
`http://<emulator>/api/predict/<service>/v1/...`, a proxy that checks the service token (as
EAS's gateway does) and forwards to the current version. An update brings the new version up
and healthy before traffic moves to it; the old one stops once its last request finished, so
a rolling update fails no request.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pai_distil.cloud.deploy import eas_schema
from pai_distil.core.protocol import UNAUTHORIZED, authorized
from .objects import store_of
from .pop import PopError, body_json, pop_router, request_id

STORE = "eas"
START_TIMEOUT_S = 300
DRAIN_TIMEOUT_S = 300
MAX_INSTANCES = 4  # processes per service version on one machine
FORWARD_HEADERS = ("authorization", "content-type", "accept")


@dataclass
class Instance:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Version:
    number: int
    instances: list[Instance] = field(default_factory=list)
    inflight: int = 0
    turn: itertools.count = field(default_factory=itertools.count)

    def pick(self) -> Instance:
        return self.instances[next(self.turn) % len(self.instances)]

    def stop(self) -> None:
        for inst in self.instances:
            if inst.proc.poll() is None:
                inst.proc.terminate()
        for inst in self.instances:
            try:
                inst.proc.wait(30)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait()


class LaunchError(Exception):
    pass


class Runtime:
    """The running versions of every service, and the lock that makes traffic switches atomic."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.store = emulator.store(STORE)
        self.root = emulator.data_dir / "eas"
        self.lock = threading.Lock()
        self.current: dict[str, Version] = {}
        self.stopping = False

    # -- traffic ------------------------------------------------------------------------------------

    def acquire(self, name: str) -> tuple[Version, Instance] | None:
        with self.lock:
            version = self.current.get(name)
            if version is None or not version.instances:
                return None
            version.inflight += 1
            return version, version.pick()

    def release(self, version: Version) -> None:
        with self.lock:
            version.inflight -= 1

    # -- rollout -------------------------------------------------------------------------------------

    def rollout(self, name: str, number: int) -> None:
        """Start version `number` of `name` in the background; switch traffic to it once healthy."""
        threading.Thread(target=self._rollout, args=(name, number), name=f"eas-{name}-v{number}", daemon=True).start()

    def _rollout(self, name: str, number: int) -> None:
        doc = self.store.get(name)
        if doc is None:
            return
        try:
            version = self._start(name, number, doc)
        except LaunchError as e:
            if (d := self.store.get(name)) and d.get("LatestVersion") == number:
                serving = "; the previous version keeps serving" if name in self.current else ""
                self.store.update(name, Status="Failed", Reason="FAILED",
                                  Message=f"version {number} did not start: {e}{serving}")
            return
        with self.lock:
            if self.stopping or self.store.get(name) is None or (self.store.get(name) or {}).get("LatestVersion") != number:
                version.stop()  # deleted or superseded meanwhile
                return
            old = self.current.get(name)
            self.current[name] = version
        self.store.update(name, Status="Running", Reason="RUNNING", Message="Service is running",
                          CurrentVersion=number, RunningInstance=len(version.instances),
                          TotalInstance=len(version.instances), UpdateTime=_now())
        if old is not None:
            self._drain(old)

    def _drain(self, old: Version) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        time.sleep(0.2)
        while old.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        old.stop()

    def _start(self, name: str, number: int, doc: dict) -> Version:
        config = doc["Config"]
        plan = launch_plan(config)
        model_dir = self.root / name / f"v{number}" / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        bucket, _, prefix = plan.oss_path[len("oss://"):].partition("/")
        if store_of(self.emulator).download_prefix(bucket, prefix, model_dir) == 0:
            raise LaunchError(f"no objects under {plan.oss_path} in the emulator's OSS")
        count = max(1, min(int(config["metadata"].get("instance") or 1), MAX_INSTANCES))
        cpu = config["metadata"].get("cpu")
        version = Version(number)
        try:
            for i in range(count):
                version.instances.append(self._spawn(name, number, i, model_dir, plan, doc["AccessToken"], cpu))
            for inst in version.instances:
                _wait_healthy(inst)
        except LaunchError:
            version.stop()
            raise
        return version

    def _spawn(self, name: str, number: int, index: int, model_dir: Path, plan: LaunchPlan, token: str,
               cpu: int | None) -> Instance:
        from pai_distil.cloud.deploy.local import TOKEN_ENV

        port = _free_port()
        log = self.root / name / f"v{number}" / f"instance-{index}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        # metadata.cpu cores per instance; one thread otherwise: instances share this machine's cores
        threads = str(min(int(cpu or 1), os.cpu_count() or 1))
        if plan.reward_args is not None:
            argv = [sys.executable, "-m", "pai_distil", "reward", "serve", str(model_dir), *plan.reward_args,
                    "--host", "127.0.0.1", "--port", str(port)]
            env = {**os.environ, "OMP_NUM_THREADS": threads, **plan.env}
        else:
            argv = [sys.executable, "-m", "pai_distil", "deploy", "local", str(model_dir), "--port", str(port),
                    "--name", plan.served, "--threads", threads]
            env = {**os.environ, TOKEN_ENV: token}
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return Instance(port, proc, log)

    def remove(self, name: str) -> None:
        with self.lock:
            version = self.current.pop(name, None)
        if version is not None:
            threading.Thread(target=self._drain, args=(version,), daemon=True).start()
        shutil.rmtree(self.root / name, ignore_errors=True)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            versions, self.current = list(self.current.values()), {}
        for v in versions:
            v.stop()


@dataclass
class LaunchPlan:
    """What a service version runs, read from its config's command, env and storage."""

    oss_path: str  # the checkpoint
    served: str  # the served model name
    reward_args: list[str] | None = None  # `reward serve` options besides the address; None: a chat model
    env: dict[str, str] = field(default_factory=dict)  # the container's env


def _reward_args(args: list[str]) -> list[str] | None:
    """The options of a `reward serve PATH ...` command, without --host and --port (the emulator picks them)."""
    starts = [i for i in range(len(args) - 2) if args[i:i + 2] == ["reward", "serve"]]
    if not starts:
        return None
    rest, out = args[starts[0] + 3:], []
    while rest:
        arg, rest = rest[0], rest[1:]
        if arg in ("--host", "--port"):
            rest = rest[1:]
        elif not arg.startswith(("--host=", "--port=")):
            out.append(arg)
    return out


def launch_plan(config: dict) -> LaunchPlan:
    """How to run a service config here: its checkpoint on OSS, its server and that server's options."""
    container = config["containers"][0]
    args = shlex.split(container.get("script") or container.get("command") or "")
    model = None
    for flag in ("--model", "--model-path"):
        if flag in args and args.index(flag) + 1 < len(args):
            model = args[args.index(flag) + 1]
    if model is None and "serve" in args and args.index("serve") + 1 < len(args):
        model = args[args.index("serve") + 1]  # `vllm serve MODEL`
    if model is None:
        raise LaunchError("the emulator runs OpenAI-compatible model servers (`vllm serve PATH`, "
                          "`sglang.launch_server --model-path PATH`) and reward servers (`pai_distil reward "
                          "serve PATH`); the start command names no model path")
    served = args[args.index("--served-model-name") + 1] if "--served-model-name" in args else config["metadata"]["name"]
    env = {e["name"]: e["value"] for e in container.get("env") or []}
    for mount in config.get("storage") or []:
        root = mount.get("mount_path", "").rstrip("/")
        oss = (mount.get("oss") or {}).get("path")
        if oss and (model == root or model.startswith(root + "/")):
            rel = model[len(root):].strip("/")
            return LaunchPlan(oss.rstrip("/") + "/" + (rel + "/" if rel else ""), served, _reward_args(args), env)
    raise LaunchError(f"the model path {model} is not under an OSS storage mount of the service")


def _wait_healthy(inst: Instance) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if inst.proc.poll() is not None:
            tail = inst.log.read_text(errors="replace").strip().splitlines()[-1:] if inst.log.exists() else []
            raise LaunchError(f"the server exited with code {inst.proc.returncode}: {' '.join(tail)}")
        try:
            if httpx.get(inst.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise LaunchError(f"the server was not healthy after {START_TIMEOUT_S} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def runtime_of(emulator) -> Runtime:
    rt = emulator.services.get("eas.runtime")
    if rt is None:
        rt = emulator.services["eas.runtime"] = Runtime(emulator)
    return rt


# -- API ------------------------------------------------------------------------------------------


def _config(raw: bytes) -> dict:
    config = body_json(raw)
    found = eas_schema.problems(config)
    if found:
        raise PopError(400, "InvalidParameter", f"invalid service config: {found[0]}")
    try:
        launch_plan(config)
    except LaunchError as e:
        raise PopError(400, "InvalidParameter", str(e)) from None
    return config


def _public(doc: dict, emulator) -> dict:
    """DescribeService's fields of a stored service."""
    base = f"http://{emulator.endpoint}/api/predict/{doc['ServiceName']}"
    meta = doc["Config"]["metadata"]
    container = doc["Config"]["containers"][0]
    import json

    return {k: v for k, v in {
        "ServiceName": doc["ServiceName"], "ServiceId": doc["ServiceId"], "Region": doc["Region"],
        "Status": doc["Status"], "Reason": doc.get("Reason"), "Message": doc.get("Message"),
        "CurrentVersion": doc.get("CurrentVersion", 0), "LatestVersion": doc["LatestVersion"],
        "RunningInstance": doc.get("RunningInstance", 0), "TotalInstance": doc.get("TotalInstance", 0),
        "PendingInstance": 0, "InternetEndpoint": base, "IntranetEndpoint": base,
        "AccessToken": doc["AccessToken"], "Image": container.get("image"), "Cpu": meta.get("cpu"),
        "Memory": meta.get("memory"), "Gpu": meta.get("gpu"), "WorkspaceId": meta.get("workspace_id"),
        "ServiceConfig": json.dumps(doc["Config"]), "CreateTime": doc["CreateTime"], "UpdateTime": doc["UpdateTime"],
        "CallerUid": doc.get("CallerUid"),
    }.items() if v is not None}


def router(emulator) -> APIRouter:
    rt = runtime_of(emulator)
    api = pop_router()

    def existing(cluster: str, name: str) -> dict:
        doc = rt.store.get(name) if eas_schema.valid_name(name) else None
        if doc is None:
            raise PopError(404, "InvalidService.NotFound", f"service {name} does not exist in {cluster}")
        return doc

    @api.post("/api/v2/services")
    async def create_service(request: Request):
        config = _config(await request.body())
        name = config["metadata"]["name"]
        region = request.query_params.get("ClusterId") or _region(request)
        with rt.lock:
            if rt.store.get(name) is not None:
                raise PopError(400, "InvalidService.AlreadyExists", f"service {name} already exists; update it instead")
            token = config["metadata"].get("token") or secrets.token_urlsafe(24)
            doc = {"ServiceName": name, "ServiceId": f"eas-m-{uuid.uuid4().hex[:12]}", "Region": region,
                   "Status": "Creating", "Reason": "CREATING", "Message": "Creating the service", "Config": config,
                   "AccessToken": token, "LatestVersion": 1, "CurrentVersion": 0, "CreateTime": _now(),
                   "UpdateTime": _now(), "CallerUid": request.state.access_key_id,
                   "TotalInstance": int(config["metadata"].get("instance") or 1)}
            rt.store.put(name, doc)
        rt.rollout(name, 1)
        base = f"http://{emulator.endpoint}/api/predict/{name}"
        return {"RequestId": request_id(), "ServiceId": doc["ServiceId"], "ServiceName": name, "Region": region,
                "Status": "Creating", "InternetEndpoint": base, "IntranetEndpoint": base}

    @api.get("/api/v2/services")
    async def list_services(request: Request):
        q = request.query_params
        try:
            page, size = max(1, int(q.get("PageNumber", 1))), max(1, min(100, int(q.get("PageSize", 100))))
        except ValueError:
            raise PopError(400, "InvalidParameter", "PageNumber and PageSize must be integers") from None
        docs = [d for d in rt.store.all() if not q.get("ServiceName") or q["ServiceName"] in d["ServiceName"]]
        chosen = docs[(page - 1) * size: page * size]
        return {"RequestId": request_id(), "PageNumber": page, "PageSize": size, "TotalCount": len(docs),
                "Services": [_public(d, emulator) for d in chosen]}

    @api.get("/api/v2/services/{cluster}/{name}")
    async def describe_service(cluster: str, name: str):
        return {"RequestId": request_id(), **_public(existing(cluster, name), emulator)}

    @api.put("/api/v2/services/{cluster}/{name}")
    async def update_service(cluster: str, name: str, request: Request):
        config = _config(await request.body())
        if config["metadata"]["name"] != name:
            raise PopError(400, "InvalidParameter", f"metadata.name {config['metadata']['name']!r} is not {name!r}; "
                                                    "a service cannot be renamed")
        with rt.lock:
            doc = existing(cluster, name)
            number = doc["LatestVersion"] + 1
            token = config["metadata"].get("token") or doc["AccessToken"]
            rt.store.update(name, Config=config, AccessToken=token, LatestVersion=number, Status="Updating",
                            Reason="UPDATING", Message=f"Rolling out version {number}", UpdateTime=_now())
        rt.rollout(name, number)
        return {"RequestId": request_id(), "Message": f"Service {name} is updating to version {number}"}

    @api.delete("/api/v2/services/{cluster}/{name}")
    async def delete_service(cluster: str, name: str):
        with rt.lock:
            existing(cluster, name)
            rt.store.delete(name)
        rt.remove(name)
        return {"RequestId": request_id(), "Message": f"Service {name} is being deleted"}

    predict = APIRouter()

    @predict.api_route("/api/predict/{name}/{path:path}", methods=["GET", "POST"])
    async def proxy(name: str, path: str, request: Request):
        doc = rt.store.get(name) if eas_schema.valid_name(name) else None
        if doc is None:
            return JSONResponse({"error": {"message": f"service {name} does not exist", "type": "not_found"}}, 404)
        if not authorized(request.headers.get("authorization"), doc["AccessToken"]):
            return JSONResponse(UNAUTHORIZED, status_code=401)
        picked = rt.acquire(name)
        if picked is None:
            return JSONResponse({"error": {"message": f"service {name} is {doc['Status']}; no instance serves yet",
                                           "type": "service_unavailable"}}, 503)
        version, inst = picked
        try:
            client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
            upstream = client.build_request(
                request.method, f"{inst.url}/{path}", params=list(request.query_params.multi_items()),
                headers={k: v for k, v in request.headers.items() if k.lower() in FORWARD_HEADERS},
                content=await request.body())
            resp = await client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            rt.release(version)
            await client.aclose()
            return JSONResponse({"error": {"message": f"instance unreachable: {type(e).__name__}",
                                           "type": "server_error"}}, 502)

        async def body():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()
                await client.aclose()
                rt.release(version)

        headers = {k: v for k, v in resp.headers.items() if k.lower() == "content-type"}
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(body(), status_code=resp.status_code, headers=headers)
        data = b"".join([chunk async for chunk in body()])
        return Response(data, status_code=resp.status_code, headers=headers)

    outer = APIRouter()
    outer.include_router(api)
    outer.include_router(predict)
    return outer


def _region(request: Request) -> str:
    host = request.headers.get("x-acs-region-id") or ""
    return host or "cn-hangzhou"


def start(emulator) -> None:
    """Bring back the services that were serving when the emulator stopped (state survives restarts)."""
    rt = runtime_of(emulator)
    for doc in rt.store.all():
        if doc.get("Status") in ("Running", "Creating", "Updating"):
            rt.store.update(doc["ServiceName"], Status="Creating" if not doc.get("CurrentVersion") else "Updating",
                            Message="Restarting after an emulator restart")
            rt.rollout(doc["ServiceName"], doc["LatestVersion"])


def stop(emulator) -> None:
    runtime_of(emulator).stop_all()
