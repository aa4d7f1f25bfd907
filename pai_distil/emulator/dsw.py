"""The PAI-DSW instance API (`/api/v2/instances` ...), as alibabacloud-pai-dsw20220101 calls it.

CreateInstance, GetInstance, ListInstances (filters: InstanceName, Status, Labels, paging),
StopInstance, StartInstance, DeleteInstance, with DSW's states (Creating, Running, Stopping,
Stopped) and its error body. An instance's OSS datasets are copied into
`<data-dir>/dsw/<id>/mounts/<n>`, the folders a notebook would see; the emulator starts no
notebook server, so JupyterlabUrl points at nothing.
"""

from __future__ import annotations

import shutil
import time
import uuid

from fastapi import APIRouter, Request

from .dlc_runner import iso, parse_oss_uri
from .objects import store_of
from .pop import PopError, body_json, paging, pop_router, request_id, stored

STORE = "dsw-instances"


def router(emulator) -> APIRouter:
    store = emulator.store(STORE)
    objects = store_of(emulator)
    r = pop_router()

    def get(instance_id: str) -> dict:
        return stored(store, instance_id, "dsw-", "100030001", f"Instance {instance_id} is not found")

    def ok(**fields) -> dict:
        return {"Success": True, "Code": "200", "Message": "", "HttpStatusCode": 200, "RequestId": request_id(), **fields}

    def materialise(inst: dict) -> None:
        root = emulator.data_dir / "dsw" / inst["InstanceId"] / "mounts"
        for i, ds in enumerate(inst.get("Datasets") or []):
            bucket, prefix = parse_oss_uri(ds.get("Uri", ""))
            target = root / str(i)
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            if objects.bucket(bucket) is not None:
                objects.download_prefix(bucket, prefix, target)

    @r.post("/api/v2/instances")
    async def create(request: Request) -> dict:
        body = body_json(await request.body())
        if not isinstance(body.get("InstanceName"), str) or not body["InstanceName"]:
            raise PopError(400, "InvalidParameter", "InstanceName is required, a string")
        if not body.get("ImageUrl") and not body.get("ImageId"):
            raise PopError(400, "InvalidParameter", "ImageUrl or ImageId is required")
        if not body.get("EcsSpec") and not body.get("RequestedResource"):
            raise PopError(400, "InvalidParameter", "EcsSpec or RequestedResource is required")
        datasets = body.get("Datasets") or []
        if not isinstance(datasets, list):
            raise PopError(400, "InvalidParameter", "Datasets must be a list of {Uri, MountPath} objects")
        for i, ds in enumerate(datasets):
            if not isinstance(ds, dict) or not str(ds.get("Uri", "")).startswith("oss://") \
                    or not str(ds.get("MountPath", "")).startswith("/"):
                raise PopError(400, "InvalidParameter", f"Datasets[{i}] needs an oss:// Uri and an absolute MountPath")
        instance_id = "dsw-" + uuid.uuid4().hex[:14]
        now = iso(time.time())
        inst = {**body, "InstanceId": instance_id, "Status": "Running", "GmtCreateTime": now, "GmtModifiedTime": now,
                "JupyterlabUrl": f"http://{emulator.endpoint}/_emulator/dsw/{instance_id}/lab",
                "ReasonCode": "", "ReasonMessage": ""}
        store.put(instance_id, inst)
        materialise(inst)
        return ok(InstanceId=instance_id)

    @r.get("/api/v2/instances/{instance_id}")
    def get_instance(instance_id: str) -> dict:
        return ok(**get(instance_id))

    @r.get("/api/v2/instances")
    def list_instances(request: Request) -> dict:
        q = request.query_params
        items = sorted(store.all(), key=lambda i: i["GmtCreateTime"], reverse=True)
        if q.get("InstanceName"):
            items = [i for i in items if q["InstanceName"] in i["InstanceName"]]
        if q.get("Status"):
            items = [i for i in items if i["Status"] == q["Status"]]
        page, size = paging(q, 50)
        return ok(Instances=items[(page - 1) * size: page * size], TotalCount=len(items))

    @r.put("/api/v2/instances/{instance_id}/stop")
    def stop(instance_id: str) -> dict:
        inst = get(instance_id)
        store.update(instance_id, Status="Stopped", GmtModifiedTime=iso(time.time()))
        return ok(InstanceId=inst["InstanceId"])

    @r.put("/api/v2/instances/{instance_id}/start")
    def start(instance_id: str) -> dict:
        inst = get(instance_id)
        materialise(inst)
        store.update(instance_id, Status="Running", GmtModifiedTime=iso(time.time()))
        return ok(InstanceId=instance_id)

    @r.delete("/api/v2/instances/{instance_id}")
    def delete(instance_id: str) -> dict:
        get(instance_id)
        store.delete(instance_id)
        shutil.rmtree(emulator.data_dir / "dsw" / instance_id, ignore_errors=True)
        return ok(InstanceId=instance_id)

    return r
