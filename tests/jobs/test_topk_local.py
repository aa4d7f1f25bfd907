"""The teacher's top-k copied to local disk once per node, verified against the artifact's manifest."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from pai_distil.core.artifacts import write_manifest
from pai_distil.core.contract import JobError
from pai_distil_jobs.train import topk_local
from pai_distil_jobs.train.teacher_topk import TopKStore, write_shard
from pai_distil_jobs.train.topk_local import COPIED, LOCAL_CACHE_ENV, local_topk


def artifact(folder: Path, rows: int = 6, k: int = 4) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 3):
        n = [5 + i for i in range(3)]
        scored = [(rng.integers(0, 100, (m, k)), rng.normal(size=(m, k)).astype(np.float32)) for m in n]
        write_shard(folder, start, start + 3, [f"row{start + i}" for i in range(3)], scored,
                    [list(range(m)) for m in n], k, 100, {"teacher": "t"})
    write_manifest(folder, stage="teacher-logits")
    return folder


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "nvme"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return tmp_path / "nvme"


def test_the_shards_are_copied_once_verified_and_read_the_same(tmp_path, local, monkeypatch):
    src = artifact(tmp_path / "oss")
    copies = []
    real = topk_local.copy_verified
    monkeypatch.setattr(topk_local, "copy_verified", lambda *a: copies.append(1) or real(*a))
    where = local_topk(src, say=lambda m: None)
    assert where.parent.parent == local and (where / COPIED).exists() and copies == [1]
    assert sorted(p.name for p in where.glob("shard-*")) == sorted(p.name for p in src.glob("shard-*"))
    a, b = TopKStore(src), TopKStore(where)
    for key in ("row0", "row5"):
        assert all(np.array_equal(x, y) for x, y in zip(a.get(key), b.get(key)))
    assert local_topk(src, say=lambda m: None) == where and copies == [1]  # a second rank or rerun: no copy


def test_a_shard_that_differs_from_its_manifest_is_one_line_and_leaves_no_copy(tmp_path, local):
    src = artifact(tmp_path / "oss")
    shard = sorted(src.glob("shard-*"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(JobError, match=rf"{shard.name} differs from its manifest.*rerun the teacher-logits"):
        local_topk(src, say=lambda m: None)
    assert not any(p.joinpath(COPIED).exists() for p in (local / "pai-distil-topk").iterdir())


def test_no_manifest_or_no_room_reads_in_place_and_says_so(tmp_path, local, monkeypatch):
    src = artifact(tmp_path / "oss")
    lines = []
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(topk_local.shutil, "disk_usage", lambda p: Usage(1 << 30, 1 << 30, 1 << 20))
    assert local_topk(src, say=lines.append) == src and "does not fit" in lines[-1]
    (src / "manifest.json").unlink()
    assert local_topk(src, say=lines.append) == src and "unverified" in lines[-1]


def test_other_ranks_on_the_node_do_not_copy(tmp_path, local, monkeypatch):
    src = artifact(tmp_path / "oss")
    monkeypatch.setattr(topk_local, "copy_verified", lambda *a: pytest.fail("only local rank 0 copies"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    import pai_distil_jobs.train.build_once as build_once

    monkeypatch.setattr(build_once, "WAIT_S", 0.3)
    with pytest.raises(JobError, match="rank 0"):  # nobody copies here: it waits, then says where to look
        local_topk(src, say=lambda m: None)
