"""Whether the GPUs a container was given are usable by its torch: checked by the image's smoke test and at
every job's first model load, so a GPU node whose torch cannot use its GPUs fails in one line instead of
training on the CPU for hours."""

from __future__ import annotations

import functools
import glob


class SmokeError(Exception):
    pass


def check_cuda() -> str:
    """The GPU this container was given is usable by torch; its name."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU build)"
        raise SmokeError(f"torch {torch.__version__} (CUDA {built}) sees no GPU: check the node's driver and that "
                         "the container was started with its GPUs")
    return torch.cuda.get_device_name(0)


@functools.cache
def require_usable_gpus() -> None:
    """Where GPUs are attached (/dev/nvidia0, ...), torch can use them; else a JobError in one line."""
    from pai_distil.core.contract import JobError

    attached = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if attached:
        try:
            check_cuda()
        except SmokeError as e:
            raise JobError(f"{len(attached)} GPU device(s) attached ({', '.join(attached[:2])}), but {e}") from None
