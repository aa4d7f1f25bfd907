"""A finished checkpoint in the precision it was trained in (jobs/models/precision.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pai_distil_jobs.models.precision import cast_checkpoint
from serving import micro_checkpoint


def test_cast_rewrites_floats_keeps_integers_and_metadata_and_declares_the_dtype(tmp_path):
    save_file({"w": torch.full((2, 3), 1.0009765625), "steps": torch.arange(3)}, str(tmp_path / "head.safetensors"),
              metadata={"likelihood": "mean"})
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32", "hidden_size": 8}))
    assert cast_checkpoint(tmp_path, "bfloat16") == 1
    with safe_open(str(tmp_path / "head.safetensors"), framework="pt") as f:
        assert f.metadata() == {"likelihood": "mean"}
        assert f.get_tensor("w").dtype == torch.bfloat16 and f.get_tensor("w")[0, 0].item() == 1.0  # bf16 rounding
        assert f.get_tensor("steps").dtype == torch.int64
    assert json.loads((tmp_path / "config.json").read_text()) == {"dtype": "bfloat16", "hidden_size": 8}
    assert cast_checkpoint(tmp_path, "bfloat16") == 0  # already there: nothing rewritten
    with pytest.raises(ValueError, match="dtype 'int8'"):
        cast_checkpoint(tmp_path, "int8")


def test_a_cast_checkpoint_loads_in_bf16_at_half_the_size(tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = micro_checkpoint(tmp_path / "student")
    before = (ckpt / "model.safetensors").stat().st_size
    fp32 = AutoModelForCausalLM.from_pretrained(ckpt)
    cast_checkpoint(ckpt, "bfloat16")
    assert (ckpt / "model.safetensors").stat().st_size < 0.55 * before
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="auto")
    assert model.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(fp32.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_sharded_index_states_the_new_size(tmp_path):
    for i in (1, 2):
        save_file({f"w{i}": torch.ones(4, 4)}, str(tmp_path / f"model-0000{i}-of-00002.safetensors"))
    index = {"metadata": {"total_size": 128}, "weight_map": {"w1": "model-00001-of-00002.safetensors",
                                                              "w2": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    cast_checkpoint(tmp_path, "bfloat16")
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == 64
