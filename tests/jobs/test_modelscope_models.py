"""ModelScope model ids (`ms://ORG/NAME`) for students and teachers: kept as they are by validation, and
turned into the model's folder in the ModelScope cache (MODELSCOPE_CACHE) when the job starts, so every
loader reads a local checkpoint; one that is neither cached nor downloadable fails the job in one line."""

from __future__ import annotations

import pytest
from conftest import job_errors, run_job
from hub_caches import modelscope_repo
from real_models import tiny_checkpoint

from pai_distil.core.config import SlowThinkingConfig, validate
from pai_distil.core.errors import UserError

NO_HUB = {"MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"}  # a closed port: nothing leaves the machine


def test_modelscope_ids_are_kept_and_malformed_ones_refused_in_one_line():
    cfg = validate(SlowThinkingConfig, {"student": {"model": "ms://Qwen/Qwen3-0.6B@v1.0"}}, "cfg")
    assert cfg.student.model == "ms://Qwen/Qwen3-0.6B@v1.0"
    for bad, fragment in [("hf://Qwen/Qwen3-0.6B", "without hf://"), ("ms://Qwen/Qwen3-0.6B:train", "ms://ORG/NAME"),
                          ("ms://Qwen", "ms://ORG/NAME")]:
        with pytest.raises(UserError) as e:
            validate(SlowThinkingConfig, {"student": {"model": bad}}, "cfg")
        assert "\n" not in str(e.value).strip() and "student.model" in str(e.value) and fragment in str(e.value)


def test_a_job_loads_a_modelscope_model_from_the_cache(tmp_path):
    cache = tmp_path / "ms"
    snapshot = modelscope_repo(cache, "Qwen/Qwen3-tiny", "model", {".": tiny_checkpoint(tmp_path / "ckpt")})
    cfg = {"models": [{"name": "tiny", "model": "ms://Qwen/Qwen3-tiny"}], "problems": {"n": 2}, "max_new_tokens": 8}
    proc = run_job("evaluate", cfg, tmp_path / "out", env={"MODELSCOPE_CACHE": str(cache), **NO_HUB})
    assert proc.returncode == 0, proc.stderr
    assert f"model ms://Qwen/Qwen3-tiny: {snapshot}" in proc.stderr + proc.stdout


def test_a_modelscope_model_neither_cached_nor_reachable_fails_in_one_line(tmp_path):
    cfg = {"models": [{"name": "m", "model": "ms://Qwen/Qwen3-missing"}], "problems": {"n": 2}}
    proc = run_job("evaluate", cfg, tmp_path / "out", env={"MODELSCOPE_CACHE": str(tmp_path / "ms"), **NO_HUB})
    assert proc.returncode == 2
    assert len(job_errors(proc)) == 1 and "Traceback" not in proc.stderr
    assert "ms://Qwen/Qwen3-missing is not in the ModelScope cache" in job_errors(proc)[0]
