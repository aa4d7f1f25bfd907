"""The emulator refuses what the real services refuse: a correctly signed request whose date is
more than 15 minutes off, a POP request whose signature nonce was used already, and bucket names
OSS rejects. The real oss2 and tea-openapi clients sign every request; only their clocks and
nonce generators are set, as a client with a wrong clock or a replayed request would have them."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from email.utils import formatdate

import httpx
import oss2
import pytest
from alibabacloud_pai_dlc20201203 import models as m
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils import Utils
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, dlc_client, start_emulator

from pai_distil.emulator.auth import request_time


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


def test_request_times_in_each_service_format():
    assert request_time("Tue, 01 Dec 2026 23:00:00 GMT") == request_time("20261201T230000Z") \
        == request_time("2026-12-01T23:00:00Z") == 1796166000.0
    assert request_time("yesterday") is None


def skew_oss_clock(monkeypatch, seconds: float) -> None:
    """oss2's clock `seconds` off: the Date of V1 signatures, the x-oss-date of V4 ones."""

    class Skewed(datetime):
        @classmethod
        def utcnow(cls):
            return datetime.utcnow() + timedelta(seconds=seconds)

    monkeypatch.setattr(oss2.utils, "http_date", lambda t=None: formatdate(time.time() + seconds, usegmt=True))
    monkeypatch.setattr(oss2.auth, "datetime", Skewed)


@pytest.mark.parametrize("auth", [oss2.Auth, oss2.AuthV4])
def test_oss_refuses_a_request_dated_outside_15_minutes(emu, monkeypatch, auth):
    bucket = oss2.Bucket(auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, f"skew-{auth.__name__.lower()}",
                         region="cn-hangzhou")
    bucket.create_bucket()
    for skew in (-16 * 60, 16 * 60):
        skew_oss_clock(monkeypatch, skew)
        with pytest.raises(oss2.exceptions.ServerError) as err:
            bucket.put_object("k", b"v")
        monkeypatch.undo()
        assert (err.value.status, err.value.code) == (403, "RequestTimeTooSkewed")
        assert not bucket.object_exists("k")
    skew_oss_clock(monkeypatch, -10 * 60)
    bucket.put_object("k", b"v")  # ten minutes behind is within the window
    monkeypatch.undo()
    assert bucket.get_object("k").read() == b"v"


def test_pop_refuses_stale_dates_and_replayed_nonces(emu, monkeypatch):
    client = dlc_client(emu)
    client.list_jobs(m.ListJobsRequest())
    monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: "the-same-nonce-every-time"))
    client.list_jobs(m.ListJobsRequest())
    with pytest.raises(ClientException) as replay:
        client.list_jobs(m.ListJobsRequest())
    assert (replay.value.code, replay.value.status_code) == ("SignatureNonceUsed", 400)
    monkeypatch.undo()
    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 20 * 60))
    monkeypatch.setattr(Utils, "get_timestamp", staticmethod(lambda: stale))
    with pytest.raises(ClientException) as old:
        client.list_jobs(m.ListJobsRequest())
    assert (old.value.code, old.value.status_code) == ("InvalidTimeStamp.Expired", 400)


@pytest.mark.parametrize("name", ["-leading", "trailing-", "ab", "UPPER", "has_underscore", "x" * 64, "dot.ted"])
def test_oss_refuses_bucket_names_it_does_not_allow(emu, name):
    # oss2 checks names itself; its signer signs a request that carries the name anyway, as other clients might
    req = oss2.http.Request("PUT", f"{emu.url}/{name}/")
    oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET)._sign_request(req, name, "")
    r = httpx.put(f"{emu.url}/{name}/", headers={k: v for k, v in req.headers.items() if v is not None})
    assert r.status_code == 400 and "<Code>InvalidBucketName</Code>" in r.text, r.text
