"""PAI-DSW debug instances through alibabacloud-pai-dsw20220101: the image, OSS mounts and job
environment of a stage's run, in a notebook, to look at what the job sees."""

from __future__ import annotations

from pai_distil.core.errors import UserError
from pai_distil.cloud.pai.config import PaiConfig

RUN_LABEL = "pai-distil-run-id"


def client(cfg: PaiConfig):
    from alibabacloud_pai_dsw20220101.client import Client
    from alibabacloud_tea_openapi.models import Config

    from pai_distil.cloud.pai.credentials import chain

    protocol, endpoint = cfg.pop_endpoint("dsw")
    return Client(Config(credential=chain(), endpoint=endpoint, protocol=protocol, region_id=cfg.region,
                         connect_timeout=10000, read_timeout=60000))


def explain(e: Exception, what: str) -> UserError:
    from pai_distil.cloud.pai.dlc import explain as dlc_explain

    return UserError(dlc_explain(e, what).message.replace("PAI-DLC", "PAI-DSW").replace("`dlc_endpoint`", "`dsw_endpoint`"))


def create_instance_request(name: str, cfg: PaiConfig, image: str, mounts, env: dict[str, str], run_id: str):
    from alibabacloud_pai_dsw20220101 import models as m

    request = m.CreateInstanceRequest(
        instance_name=name, image_url=image, ecs_spec=cfg.ecs_spec, workspace_id=cfg.workspace_id,
        resource_id=cfg.quota_id, accessibility="PRIVATE", environment_variables=env,
        datasets=[m.CreateInstanceRequestDatasets(uri=x.uri, mount_path=x.path, mount_access="RW" if x.writable else "RO")
                  for x in mounts],
        labels=[m.CreateInstanceRequestLabels(key=RUN_LABEL, value=run_id)])
    if cfg.vpc_id:
        request.user_vpc = m.CreateInstanceRequestUserVpc(vpc_id=cfg.vpc_id, v_switch_id=cfg.switch_id,
                                                          security_group_id=cfg.security_group_id)
    return request


def call(what: str, fn, *args):
    try:
        return fn(*args).body
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
        raise explain(e, what) from None
