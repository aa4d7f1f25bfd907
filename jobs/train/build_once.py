"""A folder built by one process and read by many: the encoded rows beside the checkpoints (built by
global rank 0, read by every rank and every resume), the teacher's top-k on a node's local disk
(copied by each node's local rank 0).

Why a marker file rather than a barrier: the builder may take many minutes (tokenising 100k long
chains), longer than an NCCL collective waits. The folder is built where it stays and its marker is
written last, so a reader sees it complete or waits, and a build killed half-way leaves a folder
without its marker, which the next builder removes. Not built elsewhere and renamed: on an OSS mount
(the checkpoint folder on PAI) a folder rename copies and deletes every file in it.
If the builder dies, torchrun stops the waiting ranks with it; the timeout is a last resort.
"""

from __future__ import annotations

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
    """`final`, built in place by `build(final)` in the writer (it fills the empty folder and writes the
    file `complete` last); other processes wait for the marker.

    Args:
        final (Path): where the folder lives.
        build (Callable[[Path], None]): fills the empty folder; writes `complete` last.
        writer (bool): this process builds; the others wait.
        complete (str): the file whose presence marks the folder complete.
        say (callable, optional): log lines. Defaults to print.
        what (str, optional): the folder, as log lines and errors name it.
        wait_s (float, optional): how long a waiting process waits. Defaults to WAIT_S (6 hours).
        check (Callable[[Path], bool], optional): also required of a complete folder (e.g. its files'
            sizes, where a mount shows the marker before the data). Defaults to none.

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
        shutil.rmtree(stale, ignore_errors=True)  # staged by an earlier version of this code
    shutil.rmtree(final, ignore_errors=True)  # a build killed half-way (no marker; this is the only writer)
    final.mkdir()
    build(final)
    if not (final / complete).exists():
        raise RuntimeError(f"building {what} did not write {complete}")
    return final


def _wait(final: Path, done: Callable[[], bool], what: str, wait_s: float) -> Path:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > wait_s:
            raise JobError(f"waited {wait_s / 3600:.1f} h for {what} at {final}, which the first process builds; "
                           "check its log (rank 0) for why it stopped")
        time.sleep(POLL_S)
    return final
