"""`pai-distil plan` as a user meets it: one line for bad input, a torch-free client, JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLAN_IN_CLIENT = """
import sys
from pai_distil.cli import main
sys.argv = ["pai-distil", "plan", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
assert "torch" not in sys.modules, "the client imported torch"
sys.exit(code)
"""


def plan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter that fails if the client process imports torch."""
    return subprocess.run([sys.executable, "-c", PLAN_IN_CLIENT, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_an_unknown_shape_is_one_line_listing_the_known_ones(tmp_path):
    line = one_line_error(plan("slow-thinking", "--shape", "qwen9-1b", cwd=tmp_path))
    assert "unknown model shape 'qwen9-1b'" in line and "qwen3-8b" in line and "qwen2.5-32b" in line


@pytest.mark.parametrize("content", ["{not json", '{"model_type": "qwen3"}'])
def test_a_config_json_the_plan_cannot_read_is_one_line(tmp_path, content):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(content)
    line = one_line_error(plan("slow-thinking", "-i", f"student={ckpt}", cwd=tmp_path))
    assert str(ckpt / "config.json") in line and "--shape" in line


def test_a_world_that_does_not_divide_the_batch_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train: {batch_size: 32}\n")
    line = one_line_error(plan("slow-thinking", "-c", str(cfg), "--gpus", "3", cwd=tmp_path))
    assert "train.batch_size=32" in line and "multiple of" in line


def test_a_stage_that_trains_nothing_is_one_line(tmp_path):
    assert "trains nothing" in one_line_error(plan("generate", cwd=tmp_path))


def test_a_preset_plan_prints_json_and_fits(tmp_path):
    proc = plan("slow-thinking", "--gpus", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["fits"] and result["processes"] == 1 and result["models"] == {"student": "preset:tiny"}
    assert result["tokens_per_row"] == 1024 and result["micro_batch"] == 32  # the preset's defaults, as the job applies


def test_a_misfit_names_the_knob(tmp_path):
    """Qwen3-8B on one 24 GiB A10 cannot hold its fp32 weights and Adam's state: the line says what to change."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("student: {model: Qwen/Qwen3-8B}\ntrain: {max_length: 1024, batch_size: 2}\n")
    line = one_line_error(plan("slow-thinking", "-c", str(cfg), "--gpus", "1", "--gpu-type", "a10", cwd=tmp_path))
    assert "more than the 24 GiB of A10" in line and ("lora" in line or "GPUs" in line)
