"""Found by the acceptance round: a checkpoint that still passed the pre-load check but failed in
the loader (weights gone beside a `training_args.bin`, weights cut short after an intact header,
a config transformers cannot build), and NaN where a number belongs in a request body. Each must be
one `error:` line, or a 400, never a traceback or a sampler fed NaN."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import start_teacher
from serving import micro_checkpoint

from pai_distil.core.http_limits import json_problem
from pai_distil.core.model_refs import check_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    ckpt = micro_checkpoint(tmp_path_factory.mktemp("ckpt") / "student")
    (ckpt / "training_args.bin").write_bytes(b"PK\x03\x04 trainer settings, not weights")  # as a Trainer leaves it
    return ckpt


def damaged(checkpoint: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    damage(copy)
    return copy


def test_training_args_bin_is_no_weights(checkpoint, tmp_path):
    copy = damaged(checkpoint, tmp_path, lambda d: (d / "model.safetensors").unlink())
    with pytest.raises(ValueError, match="has no weights"):
        check_checkpoint(copy)


def test_weights_cut_after_an_intact_header_are_named(checkpoint, tmp_path):
    def cut(d: Path) -> None:
        f = d / "model.safetensors"
        os.truncate(f, f.stat().st_size // 2)
    check_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"model.safetensors holds \d+ bytes of tensor data .* \(truncated\?\)"):
        check_checkpoint(damaged(checkpoint, tmp_path, cut))


def test_a_checkpoint_the_loader_refuses_is_one_line(checkpoint, tmp_path, capsys):
    from pai_distil_jobs.serve.server import main

    def unknown_type(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, "model_type": "nonsense"}))
    copy = damaged(checkpoint, tmp_path, unknown_type)
    assert main([str(copy), "--no-auth"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot load the checkpoint {copy}: ") and "nonsense" in err[-1], err
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_body_is_400(constant):
    assert "NaN or Infinity" in json_problem(f'{{"temperature": {constant}}}'.encode())
    with start_teacher(api_key=None) as teacher:
        body = '{"model": "oracle", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % constant
        r = httpx.post(f"{teacher.base_url}/chat/completions", content=body,
                       headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "NaN or Infinity" in r.json()["error"]["message"], r.text
