"""The job image's own check (jobs/smoke.py): what every image build runs, and a GPU node's start."""

from __future__ import annotations

import subprocess
import sys

from pai_distil_jobs import smoke


def test_cuda_check_without_a_gpu_is_one_line_and_fails():
    proc = subprocess.run([sys.executable, "-m", "pai_distil_jobs.smoke", "--cuda"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("pai-distil smoke check failed: torch ") and "sees no GPU" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_versions_name_the_training_stack():
    found = smoke.versions()
    assert set(found) == set(smoke.STACK) and found["transformers"] and found["trl"] and found["torch"]
