"""OSS transfers of the client: downloads verified against their manifest, safe archive extraction."""

from __future__ import annotations

import io
import tarfile
import zipfile

import oss2
import pytest
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, client_env, configure, start_emulator

from pai_distil.core import artifacts
from pai_distil.core.errors import UserError
from pai_distil.cloud.pai.oss import extract


@pytest.fixture
def emu_storage(tmp_path, monkeypatch):
    """An emulator and the client's Storage configured against it (the client's own env)."""
    with start_emulator(tmp_path / "emu") as emu:
        home = tmp_path / "home"
        configure(home, emu)
        for k, v in client_env(home).items():
            monkeypatch.setenv(k, v)
        from pai_distil.cloud.pai import config
        from pai_distil.cloud.pai.oss import Storage

        yield emu, Storage(config.load())


def test_download_is_checked_against_the_manifest(tmp_path, emu_storage):
    emu, storage = emu_storage
    art = tmp_path / "artifact"
    (art / "sub").mkdir(parents=True)
    (art / "weights.bin").write_bytes(b"w" * 1000)
    (art / "sub" / "notes.txt").write_text("hello")
    artifacts.write_manifest(art)
    sent = storage.upload(art, "t/artifact")
    assert sent.files_sent == 3 and storage.upload(art, "t/artifact").files_sent == 0

    dest = tmp_path / "back"
    storage.download("t/artifact", dest)
    artifacts.verify(dest)
    assert (dest / "sub" / "notes.txt").read_text() == "hello"

    bucket = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, BUCKET)
    bucket.put_object("t/artifact/weights.bin", b"x" * 1000)  # changed behind the manifest's back
    with pytest.raises(UserError, match="weights.bin is missing or changed"):
        storage.download("t/artifact", dest)
    assert (dest / "weights.bin").read_bytes() == b"w" * 1000  # the verified copy is untouched


def _tar(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            t.addfile(info)
    return buf.getvalue()


def test_archives_that_escape_the_target_are_refused(tmp_path):
    good = tmp_path / "good.tar.gz"
    good.write_bytes(_tar({"ckpt/model.safetensors": b"m", "ckpt/config.json": b"{}"}))
    written = extract(good, tmp_path / "out")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]

    for name, data in [("up.tar.gz", _tar({"../escaped.txt": b"x"})), ("abs.tar.gz", _tar({"/tmp/abs.txt": b"x"})),
                       ("link.tar.gz", _tar({}, link=("ckpt/evil", "/etc/passwd")))]:
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(UserError, match="refusing"):
            extract(bad, tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()

    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("../../zip-escape.txt", "x")
    with pytest.raises(UserError, match="refusing"):
        extract(z, tmp_path / "out3")
    assert not list(tmp_path.glob("**/zip-escape.txt"))


def test_extraction_refuses_links_already_in_the_destination_and_bombs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ckpt").symlink_to(outside)  # planted before the archive arrives
    z = tmp_path / "through-link.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ckpt/model.safetensors", "m")
    tgz = tmp_path / "through-link.tar.gz"
    tgz.write_bytes(_tar({"ckpt/config.json": b"{}"}))
    for archive in (z, tgz):
        with pytest.raises(UserError, match="symbolic link already in"):
            extract(archive, dest)
    assert not list(outside.iterdir())

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("zeros.bin", b"\0" * (40 << 20))  # 40 MiB of zeros in a ~40 KB archive
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UserError, match="unpacks to more than"):
        extract(bomb, tmp_path / "bomb-out")
    tar_bomb = tmp_path / "bomb.tar.gz"
    tar_bomb.write_bytes(_tar({"zeros.bin": b"\0" * (40 << 20)}))
    with pytest.raises(UserError, match="unpacks to more than"):
        extract(tar_bomb, tmp_path / "bomb-out2")
    assert extract(bomb, tmp_path / "bomb-out3", max_bytes=1 << 30) == [tmp_path / "bomb-out3" / "zeros.bin"]


def test_remote_manifest_and_resumable_download_of_a_large_file(tmp_path, emu_storage):
    from pai_distil.cloud.pai.oss import MULTIPART_THRESHOLD, PART_SIZE

    emu, storage = emu_storage
    art = tmp_path / "artifact"
    art.mkdir()
    big = bytes(range(256)) * ((MULTIPART_THRESHOLD + PART_SIZE) // 256)
    (art / "model.safetensors").write_bytes(big)
    (art / "config.json").write_text("{}")
    artifacts.write_manifest(art)
    assert storage.remote_manifest("t/artifact") is None  # nothing there yet
    storage.upload(art, "t/artifact")
    manifest = storage.remote_manifest("t/artifact")
    assert artifacts.manifest_digest(manifest) == artifacts.digest(art)  # the same digest as the local copy
    reads = {k: v for k, v in emu.counters().items() if k.startswith("GetObject ")}
    assert list(reads) == [f"GetObject {BUCKET}/t/artifact/manifest.json"]  # only the manifest was read

    dest = tmp_path / "back"
    (tmp_path / ".tmp-back").mkdir()
    (tmp_path / ".tmp-back" / "stale.bin").write_bytes(b"from an interrupted older download")
    storage.download("t/artifact", dest)
    artifacts.verify(dest)
    assert (dest / "model.safetensors").read_bytes() == big and not (dest / "stale.bin").exists()
    ranged = emu.counters()[f"GetObject {BUCKET}/t/artifact/model.safetensors"]
    assert ranged >= 3  # oss2.resumable_download fetched it in parts

    bucket = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, BUCKET)
    bucket.put_object("t/artifact/config.json", b'{"changed": 1}')
    with pytest.raises(UserError, match="config.json: the manifest says 2 bytes, OSS has 14 bytes"):
        storage.remote_manifest("t/artifact")
    bucket.delete_object("t/artifact/config.json")
    with pytest.raises(UserError, match="config.json: the manifest says 2 bytes, OSS has no such object"):
        storage.remote_manifest("t/artifact")
