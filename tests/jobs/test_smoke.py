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


def test_a_job_given_gpus_that_torch_cannot_use_fails_before_training(tmp_path):
    """On a paid GPU node whose torch sees no GPU, the job stops at once in one line, never trains on the CPU."""
    from conftest import run_job

    proc = run_job("slow-thinking", {"student": {"model": "preset:micro"}}, tmp_path / "out",
                   inputs={"cots": tmp_path / "absent.jsonl"}, env={"PAI_DISTIL_GPUS": "8"})
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "was given 8 GPU(s) per node" in line and "sees no GPU" in line and "Traceback" not in proc.stderr
    bad = run_job("slow-thinking", {}, tmp_path / "out2", env={"PAI_DISTIL_GPUS": "eight"})
    assert bad.returncode == 2 and "PAI_DISTIL_GPUS='eight' is not a count of GPUs" in bad.stderr
