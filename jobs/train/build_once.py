"""A folder built by one process and read by many: the encoded rows beside the checkpoints (built by
global rank 0, read by every rank and every resume), the teacher's top-k on a node's local disk
(copied by each node's local rank 0).

Why a folder renamed into place rather than a barrier: the builder may take many minutes (tokenising
100k long chains), longer than an NCCL collective waits; a rename is atomic, so a reader sees the
whole folder or nothing, and a build killed half-way leaves only a `.tmp-*` folder nobody reads.
If the builder dies, torchrun stops the waiting ranks with it; the timeout is a last resort.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pai_distil.core.contract import JobError

WAIT_S = 6 * 3600
POLL_S = 1.0


def build_once(final: Path, build: Callable[[Path], None], *, writer: bool, complete: str, say=print,
               what: str = "the folder", wait_s: float | None = None,
               check: Callable[[Path], bool] | None = None) -> Path:
    """`final`, built by `build(tmp)` in the writer (a folder it fills, then marks with the file
    `complete` last) and renamed into place; other processes wait for it.

    Args:
        final (Path): where the folder lives once complete.
        build (Callable[[Path], None]): fills an empty temporary folder; writes `complete` last.
        writer (bool): this process builds; the others wait.
        complete (str): the file whose presence marks the folder complete.
        say (callable, optional): log lines. Defaults to print.
        what (str, optional): the folder, as log lines and errors name it.
        wait_s (float, optional): how long a waiting process waits. Defaults to WAIT_S (6 hours).
        check (Callable[[Path], bool], optional): also required of a complete folder, where a rename
            may not be atomic (an OSS fuse mount copies a folder file by file). Defaults to none.

    Returns:
        Path: `final`, complete.
    """
    final = Path(final)

    def done() -> bool:
        return (final / complete).exists() and (check is None or check(final))

    if done():
        return final
    if not writer:
        return _wait(final, done, what, WAIT_S if wait_s is None else wait_s)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a build killed half-way (this is the only writer)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        build(tmp)
        if not (tmp / complete).exists():
            raise RuntimeError(f"building {what} did not write {complete}")
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (no marker) from elsewhere
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _wait(final: Path, done: Callable[[], bool], what: str, wait_s: float) -> Path:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > wait_s:
            raise JobError(f"waited {wait_s / 3600:.1f} h for {what} at {final}, which the first process builds; "
                           "check its log (rank 0) for why it stopped")
        time.sleep(POLL_S)
    return final
