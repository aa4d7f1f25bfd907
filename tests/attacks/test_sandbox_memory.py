"""A program that stores what RLIMIT_AS will not let it hold: files on every writable place of
the sandbox, /dev/shm and /dev first. A tmpfs is memory, so every writable file system inside
must be sized, and all of them together stay below `memory_mb`.

Without bubblewrap or a Docker engine with the base image the runs skip, except where
PAI_DISTIL_REQUIRE_DOCKER=1 (CI installs both), where they fail.
"""

from __future__ import annotations

import json
import os

import pytest

from pai_distil.core.verify.isolation import scratch_mb
from pai_distil.core.verify.sandbox import Limits, SandboxUnavailable, describe, run_python

MEMORY_MB = 256
PLACES = ("/dev/shm", "/dev", "/tmp", "/", "/sandbox", "/var/tmp", "/run")

FILL = f'''
import json, os
stored = {{}}
for place in {PLACES!r}:
    n = 0
    try:
        for i in range(200):  # files of 8 MB: RLIMIT_FSIZE bounds one file, not their number
            with open(os.path.join(place, f"fill-{{i}}"), "wb") as f:
                for _ in range(8):
                    f.write(b"x" * (1 << 20))
                    n += 1
    except OSError:
        pass
    stored[place] = n
print(json.dumps(stored))
'''


def _require(kind: str) -> None:
    try:
        describe(Limits(isolation=kind))
    except SandboxUnavailable as e:
        if os.environ.get("PAI_DISTIL_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{e.message} (PAI_DISTIL_REQUIRE_DOCKER=1)")
        pytest.skip(e.message)


def _stored_mb(kind: str) -> dict[str, int]:
    r = run_python(FILL, "", Limits(timeout_s=30, memory_mb=MEMORY_MB, output_mb=1, isolation=kind))
    assert r.status == "ok", (r.status, r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["bwrap", pytest.param("docker", marks=pytest.mark.slow)])
def test_files_stay_below_the_memory_limit(kind):
    _require(kind)
    stored = _stored_mb(kind)
    tmp_mb, shm_mb = scratch_mb(MEMORY_MB)
    assert stored["/dev"] == 0 and stored["/"] == 0 and stored["/sandbox"] == 0, stored
    assert stored["/dev/shm"] <= shm_mb, stored  # sized under bubblewrap, absent under Docker
    assert stored["/tmp"] <= tmp_mb, stored
    assert sum(stored.values()) < MEMORY_MB, stored


def test_scratch_sizes_fit_the_smallest_memory_limit():
    assert scratch_mb(1024) == (64, 16)
    assert sum(scratch_mb(64)) < 64
