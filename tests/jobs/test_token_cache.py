"""Training rows tokenised once per run: written once, reused, missed when anything they depend on
changes, never read half-written; the rows are exactly encode_rows'."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pai_distil.core import oracle as teacher, world
from pai_distil.core.contract import JobError
from pai_distil_jobs.train import sft_data, token_cache
from pai_distil_jobs.train.build_once import build_once
from pai_distil_jobs.train.token_cache import CACHE_DIR, META, encoded_rows


def rows(n: int = 12, seed: int = 4) -> list[dict]:
    out = []
    for i, p in enumerate(world.generate_problems(n, seed, levels=[1, 2, 3])):
        thought, answer = world.split_thought(teacher.respond(p, 1 + i % 9))
        out.append({"messages": [{"role": "user", "content": p.text},
                                 {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n{answer}"}]})
    return out


@pytest.fixture(scope="module")
def tok():
    from pai_distil_jobs.models.models import load_tokenizer

    return load_tokenizer("preset:micro")


@pytest.fixture
def counted(monkeypatch):
    """How many rows went through the tokenizing encoder."""
    calls = []
    real = sft_data.encode_each

    def encode_each(tokenizer, batch, *a, **kw):
        calls.append(len(batch))
        return real(tokenizer, batch, *a, **kw)

    monkeypatch.setattr(sft_data, "encode_each", encode_each)
    return calls


def quiet(_):
    pass


def test_the_cache_holds_exactly_encode_rows_rows_and_a_second_call_does_not_tokenise(tok, tmp_path, counted):
    data = rows()
    first = encoded_rows(tok, data, 96, 0.5, tmp_path, keyed=True, say=quiet)
    assert sum(counted) == len(data)
    want = sft_data.encode_rows(tok, data, 96, 0.5, log=quiet)
    assert [r["input_ids"] for r in first] == [e["input_ids"] for e in want]
    assert [r["labels"] for r in first] == [e["labels"] for e in want]
    assert first["length"] == [len(e["input_ids"]) for e in want]
    from pai_distil_jobs.train.teacher_topk import row_key

    assert first["kd_key"] == [row_key(r) for r in data]  # every prompt fits: no row dropped
    counted.clear()
    lines = []
    again = encoded_rows(tok, data, 96, 0.5, tmp_path, keyed=True, say=lines.append)
    assert counted == [] and again[:] == first[:]
    assert any("read from the cache" in x for x in lines) and any("truncation:" in x for x in lines)


def test_a_changed_row_template_or_max_length_misses_the_cache(tok, tmp_path, counted):
    data = rows()
    encoded_rows(tok, data, 96, 0.5, tmp_path, say=quiet)
    changed = [*data[:-1], {**data[-1], "chat_template_kwargs": {"enable_thinking": True}}]
    import copy

    retemplated = copy.deepcopy(tok)
    retemplated.chat_template = tok.chat_template + "{# another template #}"
    for args in ((tok, data[::-1], 96), (tok, changed, 96), (tok, data, 97), (retemplated, data, 96)):
        counted.clear()
        encoded_rows(args[0], args[1], args[2], 0.5, tmp_path, say=quiet)
        assert sum(counted) == len(data), args[1:]
    # only the newest encoding is kept in a run's folder
    assert len([p for p in (tmp_path / CACHE_DIR).iterdir()]) == 1


def test_the_truncation_limit_is_checked_on_a_cache_hit_too(tok, tmp_path):
    data = rows()
    encoded_rows(tok, data, 60, 1.0, tmp_path, say=quiet)
    with pytest.raises(JobError, match="raise train.max_length"):
        encoded_rows(tok, data, 60, 0.0, tmp_path, say=quiet)


def test_a_half_written_cache_is_never_read(tok, tmp_path, counted):
    data = rows()
    key = token_cache.cache_key(tok, data, 96)
    folder = tmp_path / CACHE_DIR / key
    folder.mkdir(parents=True)
    (folder / "shard-000000000.arrow").write_bytes(b"cut off")  # a copy killed before its meta.json
    stale = tmp_path / CACHE_DIR / f".tmp-{key}-999"
    stale.mkdir()
    got = encoded_rows(tok, data, 96, 0.5, tmp_path, say=quiet)
    assert sum(counted) == len(data) and len(got) == len(sft_data.encode_rows(tok, data, 96, 0.5, log=quiet))
    assert (folder / META).exists() and not stale.exists()


def test_a_build_that_fails_leaves_nothing_a_reader_trusts(tmp_path):
    def broken(tmp: Path):
        (tmp / "part").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "x", broken, writer=True, complete="DONE")
    assert not (tmp_path / "x" / "DONE").exists()  # built where it stays (never renamed), without its marker
    built = build_once(tmp_path / "x", lambda d: (d / "DONE").write_text(""), writer=True, complete="DONE")
    assert sorted(p.name for p in built.iterdir()) == ["DONE"]  # the next build starts from an empty folder


def _wait_for(folder: str, q) -> None:
    start = time.monotonic()
    build_once(Path(folder), lambda tmp: None, writer=False, complete="DONE", wait_s=30)
    q.put(time.monotonic() - start)


def test_other_ranks_wait_for_the_writer_and_then_read(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    waiter = ctx.Process(target=_wait_for, args=(str(tmp_path / "x"), q))
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive()  # nothing there yet: it waits

    def build(tmp: Path):
        (tmp / "rows").write_text("r")
        (tmp / "DONE").write_text("")

    build_once(tmp_path / "x", build, writer=True, complete="DONE")
    waiter.join(30)
    assert waiter.exitcode == 0 and q.get(timeout=5) >= 1.5


def test_a_rank_that_waits_too_long_says_where_to_look(tmp_path):
    with pytest.raises(JobError, match="rank 0"):
        build_once(tmp_path / "x", lambda tmp: None, writer=False, complete="DONE", wait_s=0.2)


def test_many_rows_are_encoded_by_a_pool_in_order(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "MIN_ROWS_PER_WORKER", 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    data = rows(24, seed=9)
    got = encoded_rows(tok, data, 512, 0.5, tmp_path, say=quiet)
    meta = json.loads(next((tmp_path / CACHE_DIR).iterdir()).joinpath(META).read_text())
    assert len(meta["shards"]) == 8  # 2 workers x 4 shards
    assert got["input_ids"] == [e["input_ids"] for e in sft_data.encode_rows(tok, data, 512, log=quiet)]


def test_a_cache_whose_shards_are_still_being_copied_is_not_read(tok, tmp_path, counted):
    """On a mount whose folder rename is a copy, meta.json can arrive before a shard's last bytes."""
    data = rows()
    encoded_rows(tok, data, 96, 0.5, tmp_path, say=quiet)
    shard = next((tmp_path / CACHE_DIR).iterdir()) / "shard-000000000.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    counted.clear()
    got = encoded_rows(tok, data, 96, 0.5, tmp_path, say=quiet)  # rank 0 rebuilds it
    assert sum(counted) == len(data) and len(got) == len(data)
