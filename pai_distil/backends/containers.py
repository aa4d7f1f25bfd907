"""Who a job's container runs as and the bind-mounted dirs it writes: shared by the `local` backend
and the emulator's DLC pods, which run the same image the same way."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_UID = 1000  # the image's `pai` user, for jobs started by root


def container_user() -> str | None:
    """Files written to bind mounts belong to the invoking user; root's jobs run as the image's user."""
    uid = os.geteuid()
    return None if uid == 0 else f"{uid}:{os.getegid()}"


def writable_dir(path: Path) -> None:
    """Create a bind-mounted dir; when root starts the job, hand it to the image's user."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            try:
                os.chown(p, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
            except OSError:
                pass
