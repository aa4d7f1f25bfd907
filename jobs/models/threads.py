"""torch's CPU threads, sized to what this process is given.

On a shared 2-core machine, torch's default (every core, in every process) ran 5-7x slower and far
more erratically than one thread per process; on a GPU node it oversubscribes the cores the data
loaders and NCCL need. Called when a job loads its first model.
"""

from __future__ import annotations

import os


def set_cpu_threads() -> int:
    """An explicit OMP_NUM_THREADS, else the CPUs this process may use divided among the processes of its
    node (`LOCAL_WORLD_SIZE`); under torchrun, which sets OMP_NUM_THREADS=1 for every worker, the latter."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and "LOCAL_RANK" not in os.environ:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))  # the user's own choice (torchrun sets 1 itself)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
