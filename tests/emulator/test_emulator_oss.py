"""The emulator's OSS API with the real oss2 client over HTTP: objects, listing, multipart, CRC64,
signatures V1 and V4, OSS's XML errors, and an upload killed half-way then resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import oss2
import pytest
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, client_env, configure, start_emulator


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with start_emulator(tmp_path_factory.mktemp("emu") / "data") as e:
        yield e


@pytest.fixture(params=["v1", "v4"])
def bucket(request, emu):
    auth = oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET) if request.param == "v1" else oss2.AuthV4(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
    b = oss2.Bucket(auth, emu.url, f"objects-{request.param}", region="cn-hangzhou")
    b.create_bucket()
    return b


def test_objects_listing_copy_delete(bucket):
    keys = ["data/a.jsonl", "data/b c.jsonl", "data/sub/x.bin", "top.txt", "data/üñí.txt"]
    for k in keys:
        bucket.put_object(k, f"body of {k}".encode())
    assert bucket.get_object("data/b c.jsonl").read() == b"body of data/b c.jsonl"
    head = bucket.head_object("top.txt")
    assert head.content_length == len(b"body of top.txt")
    crc = oss2.utils.Crc64(0)
    crc.update(b"body of top.txt")
    assert head.server_crc == crc.crc

    assert sorted(o.key for o in oss2.ObjectIterator(bucket, prefix="data/")) == sorted(k for k in keys if k.startswith("data/"))
    page = bucket.list_objects_v2(prefix="data/", delimiter="/", max_keys=2)
    assert page.is_truncated and len(page.object_list) + len(page.prefix_list) == 2
    everything = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="data/", delimiter="/", max_keys=1)]
    assert everything == ["data/a.jsonl", "data/b c.jsonl", "data/sub/", "data/üñí.txt"]

    bucket.copy_object(bucket.bucket_name, "top.txt", "copied.txt")
    assert bucket.get_object("copied.txt").read() == b"body of top.txt"
    bucket.batch_delete_objects(["copied.txt", "top.txt"])
    assert not bucket.object_exists("copied.txt") and not bucket.object_exists("top.txt")
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object("top.txt")
    assert bucket.get_object("data/sub/x.bin", byte_range=(5, 6)).read() == b"of"


def test_multipart_with_crc_and_list_parts(bucket):
    body = os.urandom(300 * 1024)
    upload_id = bucket.init_multipart_upload("big.bin").upload_id
    parts = []
    for n, start in enumerate(range(0, len(body), 120 * 1024), 1):
        chunk = body[start:start + 120 * 1024]
        parts.append(oss2.models.PartInfo(n, bucket.upload_part("big.bin", upload_id, n, chunk).etag))
    listed = bucket.list_parts("big.bin", upload_id).parts
    assert [p.part_number for p in listed] == [1, 2, 3] and listed[2].size == 300 * 1024 - 240 * 1024
    result = bucket.complete_multipart_upload("big.bin", upload_id, parts)
    assert result.crc is not None
    assert bucket.get_object("big.bin").read() == body
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.list_parts("big.bin", upload_id)
    aborted = bucket.init_multipart_upload("gone.bin").upload_id
    bucket.abort_multipart_upload("gone.bin", aborted)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        bucket.upload_part("gone.bin", aborted, 1, b"x")


def test_wrong_secret_gets_oss_xml_error(emu):
    good = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, "auth-check")
    good.create_bucket()
    for auth in (oss2.Auth(ACCESS_KEY_ID, "wrong"), oss2.AuthV4(ACCESS_KEY_ID, "wrong")):
        with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as err:
            oss2.Bucket(auth, emu.url, "auth-check", region="cn-hangzhou").put_object("k", b"v")
        assert err.value.status == 403 and err.value.request_id
    with pytest.raises(oss2.exceptions.ServerError) as err:
        oss2.Bucket(oss2.Auth("LTAI-unknown", "x"), emu.url, "auth-check").get_object("k")
    assert (err.value.status, err.value.code) == (403, "InvalidAccessKeyId")
    raw = httpx.get(f"{emu.url}/auth-check/k", headers={"Authorization": f"OSS {ACCESS_KEY_ID}:bm90LWl0",
                                                          "Date": "Fri, 27 Nov 2026 10:00:00 GMT"})
    assert raw.status_code == 403 and raw.headers["content-type"].startswith("application/xml")
    assert "<Error><Code>SignatureDoesNotMatch</Code>" in raw.text and "<RequestId>" in raw.text
    assert not good.object_exists("k")


KILLED_UPLOAD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pai_distil.cloud.pai import config, oss
    oss.MULTIPART_THRESHOLD, oss.PART_SIZE, oss.THREADS = 100 * 1024, 100 * 1024, 1
    kill_at = int(sys.argv[2])
    def progress(consumed, total):
        if kill_at and consumed >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # as a power cut would: no cleanup at all
    sent = oss.Storage(config.load()).upload_file(Path(sys.argv[1]), "resume/big.bin", progress=progress)
    print("sent" if sent else "unchanged")
""")


def test_killed_upload_resumes_sending_only_missing_parts(emu, tmp_path):
    home = tmp_path / "home"
    configure(home, emu)
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(40 * 100 * 1024))  # 40 parts of 100 KiB
    total_parts = 40
    run = lambda kill_at: subprocess.run([sys.executable, "-c", KILLED_UPLOAD, str(data), str(kill_at)],  # noqa: E731
                                         env=client_env(home), capture_output=True, text=True, timeout=300)
    before = emu.counters().get("UploadPart", 0)
    first = run(18 * 100 * 1024)
    assert first.returncode == -9, first.stderr[-2000:]
    after_kill = emu.counters().get("UploadPart", 0)
    sent_first = after_kill - before
    assert 0 < sent_first < total_parts

    second = run(0)
    assert second.returncode == 0 and second.stdout.strip() == "sent", second.stderr[-2000:]
    sent_second = emu.counters().get("UploadPart", 0) - after_kill
    assert sent_second == total_parts - sent_first  # finished parts were not sent again

    b = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, BUCKET)
    assert b.get_object("resume/big.bin").read() == data.read_bytes()
    third = run(0)
    assert third.stdout.strip() == "unchanged"
    assert emu.counters().get("UploadPart", 0) - after_kill == sent_second
