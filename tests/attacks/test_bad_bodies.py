"""Parseable but malformed bodies get a 400 that names the field, never a 500: chat content parts
whose text is not a string (the synthetic teacher and the `deploy local` model server), numbers of
thousands of digits (the teacher), and DLC / OSS requests of the wrong shape (the emulator, each
signed by the real SDK clients)."""

from __future__ import annotations

import json

import httpx
import oss2
import pytest
from conftest import serve_asgi, start_teacher
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, dlc_client, start_emulator
from serving import micro_checkpoint

BAD_CONTENT = [[{"type": "text", "text": 5}], [{"type": "text", "text": None}], [{"type": "text", "text": ["a"]}]]
HUGE = "9" * 5000


@pytest.fixture(scope="module")
def chat_servers(tmp_path_factory):
    """(name, chat completions URL, model) of the synthetic teacher and of the model server."""
    from pai_distil_jobs.serve.chat import Engine
    from pai_distil_jobs.serve.server import create_app

    student = micro_checkpoint(tmp_path_factory.mktemp("ckpt") / "student")
    with start_teacher(api_key=None) as teacher, serve_asgi(create_app(Engine(str(student)), "student", None, "fp")) as model:
        yield [("teacher", f"{teacher.base_url}/chat/completions", "oracle"),
               ("model", f"{model}/v1/chat/completions", "student")]


@pytest.mark.parametrize("content", BAD_CONTENT)
def test_content_parts_whose_text_is_no_string_are_400(chat_servers, content):
    for name, url, model in chat_servers:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400, (name, r.text)
        assert "messages[0]" in r.json()["error"]["message"], name


def test_the_teacher_with_numbers_of_thousands_of_digits(chat_servers):
    _, url, _ = chat_servers[0]
    for prompt in (f"Start with {HUGE}. Add 5. Work modulo 10.", f"Start with 7. Add {HUGE}. Work modulo 10.",
                   f"Start with 7. Add 5. Work modulo {HUGE}."):
        r = httpx.post(url, json={"model": "oracle", "messages": [{"role": "user", "content": prompt}]}, timeout=30)
        assert r.status_code == 200, r.text
        assert "could not find one" in r.json()["choices"][0]["message"]["content"]
    raw = b'{"model": "oracle", "messages": [{"role": "user", "content": "x"}], "max_tokens": ' + HUGE.encode() + b"}"
    r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "digits" in r.json()["error"]["message"], r.text


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


def _pop_call(emu, method: str, pathname: str, body=None, query: dict | None = None) -> int:
    """Status of a POP request (DLC's, DSW's) signed by the SDK (call_api sends the body as given, unchecked)."""
    from alibabacloud_tea_openapi import utils_models
    from alibabacloud_tea_openapi.exceptions import ClientException
    from darabonba.runtime import RuntimeOptions

    params = utils_models.Params(action="Raw", version="2020-12-03", protocol="HTTP", pathname=pathname,
                                 method=method, auth_type="AK", style="ROA", req_body_type="json", body_type="json")
    try:
        dlc_client(emu).call_api(params, utils_models.OpenApiRequest(body=body, query=query or {}), RuntimeOptions())
    except ClientException as e:
        assert "InvalidParameter" in str(e.code), e
        return e.status_code if hasattr(e, "status_code") else e.data.get("statusCode", 0)
    return 200


GOOD_JOB = {"DisplayName": "j", "JobType": "PyTorchJob", "UserCommand": "true",
            "JobSpecs": [{"Type": "Worker", "PodCount": 1, "Image": "i", "EcsSpec": "ecs.g6.xlarge"}]}


@pytest.mark.parametrize("change", [{"JobSpecs": [5]}, {"DataSources": "x"}, {"DataSources": [5]},
                                    {"DataSources": [{"Uri": "oss://b/p", "MountPath": 5}]}, {"DisplayName": {"a": 1}},
                                    {"UserCommand": ["true"]}, {"JobSpecs": [{**GOOD_JOB["JobSpecs"][0], "EcsSpec": [1]}]},
                                    {"Settings": 5}, {"Settings": {"Tags": 5}}, {"Envs": "x"}, {"ResourceId": ["q"]},
                                    {"JobMaxRunningTimeMinutes": "x"},
                                    {"JobSpecs": [{**GOOD_JOB["JobSpecs"][0], "ResourceConfig": "x"}]},
                                    *({"JobSpecs": [{**GOOD_JOB["JobSpecs"][0], "PodCount": n}] * k}  # pods unbounded
                                      for n, k in ((129, 1), (True, 1), (100, 2), (10**9, 1)))])
def test_the_emulator_refuses_malformed_create_job_bodies_with_400(emu, change):
    assert _pop_call(emu, "POST", "/api/v1/jobs", {**GOOD_JOB, **change}) == 400
    assert _pop_call(emu, "GET", "/api/v1/jobs", query={"Tags": '{"a": "b"}'}) == 200  # nothing stored breaks a list


@pytest.mark.parametrize("change", [{"Datasets": "x"}, {"Datasets": [5]}, {"InstanceName": ["a"]}])
def test_the_emulator_refuses_malformed_dsw_instances_with_400(emu, change):
    body = {"InstanceName": "i", "ImageUrl": "img", "EcsSpec": "ecs.g6.xlarge", **change}
    assert _pop_call(emu, "POST", "/api/v2/instances", body) == 400
    assert _pop_call(emu, "GET", "/api/v2/instances", query={"PageNumber": "abc"}) == 400


@pytest.mark.parametrize("paging", [{"PageNumber": "-1"}, {"PageNumber": "0"}, {"PageSize": "0"}, {"PageSize": "x"}])
def test_the_emulator_refuses_pages_below_one_with_400(emu, paging):
    assert _pop_call(emu, "GET", "/api/v1/jobs", query=paging) == 400
    assert _pop_call(emu, "GET", "/api/v2/instances", query=paging) == 400


@pytest.mark.parametrize("tags", ["[1]", "5", '"x"'])
def test_the_emulator_refuses_tags_that_are_no_object_with_400(emu, tags):
    assert _pop_call(emu, "GET", "/api/v1/jobs", query={"Tags": tags}) == 400


@pytest.mark.parametrize("number", ["²", "1_0", "abc", "0", "10001"])
def test_the_emulator_refuses_bad_part_numbers_with_400(emu, number):
    bucket = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, "parts")
    bucket.create_bucket()
    upload = bucket.init_multipart_upload("k").upload_id
    with pytest.raises(oss2.exceptions.ServerError) as err:
        bucket.upload_part("k", upload, number, b"x")
    assert (err.value.status, err.value.code) == (400, "InvalidArgument")
    with pytest.raises(oss2.exceptions.ServerError) as err:
        bucket.complete_multipart_upload("k", upload, [oss2.models.PartInfo(number, "etag")])
    assert err.value.status == 400
    if not number.isdigit():  # a marker past the parts lists none
        with pytest.raises(oss2.exceptions.ServerError) as err:
            bucket.list_parts("k", upload, marker=number)
        assert err.value.status == 400


def test_a_json_number_of_thousands_of_digits_is_named():
    from pai_distil.core.http_limits import json_problem

    assert "digits" in json_problem(json.dumps({"n": 1}).replace("1", HUGE).encode())
