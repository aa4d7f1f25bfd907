"""Whether the GPUs a container was given are usable by its torch: checked by the image's smoke test, at the
start of a job that was given GPUs (PAI_DISTIL_GPUS) and at every job's first model load, so a GPU node
whose torch cannot use its GPUs fails in one line instead of training on the CPU for hours, billed."""

from __future__ import annotations

import functools
import glob
import os

GPUS_ENV = "PAI_DISTIL_GPUS"  # GPUs each node was given (the job contract; unset or 0: none asked for)


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


def gpus_asked() -> int:
    """The GPUs per node the job was given, by the contract's PAI_DISTIL_GPUS (0 when unset)."""
    from pai_distil.core.contract import JobError

    raw = os.environ.get(GPUS_ENV, "").strip() or "0"
    if not raw.isdigit():
        raise JobError(f"{GPUS_ENV}={raw!r} is not a count of GPUs; unset it or give a whole number")
    return int(raw)


@functools.cache
def require_usable_gpus() -> None:
    """Where GPUs were asked for (PAI_DISTIL_GPUS) or are attached (/dev/nvidia0, ...), torch can use them;
    else a JobError in one line."""
    from pai_distil.core.contract import JobError

    attached = sorted(glob.glob("/dev/nvidia[0-9]*"))
    asked = gpus_asked()
    if asked and not attached:
        try:
            check_cuda()
        except SmokeError as e:
            raise JobError(f"the job was given {asked} GPU(s) per node, but {e}; it would train on the CPU "
                           "while the GPUs bill") from None
    elif attached:
        try:
            check_cuda()
        except SmokeError as e:
            raise JobError(f"{len(attached)} GPU device(s) attached ({', '.join(attached[:2])}), but {e}") from None
