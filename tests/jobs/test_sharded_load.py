"""Models loaded straight into their sharded layout and dtype (jobs/train/sharded_load.py), and the
DeepSpeed / FSDP settings the trainer is given (deepspeed_config.zero_config, trainer.fsdp_config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT

from pai_distil.core.config import Training
from pai_distil_jobs.train import sharded_load
from pai_distil_jobs.train.deepspeed_config import zero_config
from pai_distil_jobs.train.trainer import fsdp_config

QWEN3_8B_HIDDEN = 4096


# -- the settings ------------------------------------------------------------------------------------


def test_zero3_on_gpus_overlaps_and_sizes_buckets_by_the_hidden_size():
    cfg = zero_config(Training(batch_size=64, deepspeed={"stage": 3, "bf16": True}), world_size=8,
                      hidden_size=QWEN3_8B_HIDDEN)
    assert cfg["zero_optimization"] == {
        "stage": 3, "contiguous_gradients": True, "overlap_comm": True,
        "reduce_bucket_size": 16_777_216, "stage3_prefetch_bucket_size": 15_099_494,
        "stage3_param_persistence_threshold": 40_960, "stage3_gather_16bit_weights_on_model_save": True}
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["bf16"] == {"enabled": True}
    assert cfg["zero_allow_untested_optimizer"] and cfg["zero_force_ds_cpu_optimizer"] is False
    assert "optimizer" not in cfg


def test_zero2_offload_on_gpus_is_deepspeed_cpu_adam_in_pinned_memory():
    cfg = zero_config(Training(batch_size=16, deepspeed={"stage": 2, "offload_optimizer": True}), world_size=8,
                      hidden_size=QWEN3_8B_HIDDEN)
    zero = cfg["zero_optimization"]
    assert zero["overlap_comm"] and zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 16_777_216
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    # an optimizer named in the config makes DeepSpeed build DeepSpeedCPUAdam; its numbers are the trainer's
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}
    assert "zero_force_ds_cpu_optimizer" not in cfg and "stage3_prefetch_bucket_size" not in zero


def test_zero_on_cpus_keeps_torch_adamw_unpinned_and_tiny_models_get_the_smallest_bucket():
    cfg = zero_config(Training(batch_size=4, deepspeed={"stage": 3, "offload_optimizer": True, "offload_param": True}),
                      world_size=2, hidden_size=64, gpu=False)
    zero = cfg["zero_optimization"]
    assert zero["overlap_comm"] is False
    assert zero["offload_optimizer"] == zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == 1_000_000
    assert zero["stage3_param_persistence_threshold"] == 640
    assert "optimizer" not in cfg and cfg["zero_force_ds_cpu_optimizer"] is False


def test_an_unknown_hidden_size_leaves_the_buckets_to_transformers():
    zero = zero_config(Training(deepspeed={"stage": 3}), world_size=1)["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == "auto"
    assert zero["stage3_param_persistence_threshold"] == "auto"


def test_fsdp_loads_once_per_node_and_checkpoints_sharded():
    train = Training(fsdp={"sharding": "shard_grad_op", "offload": True})
    assert fsdp_config(train.fsdp) == {
        "version": 2, "reshard_after_forward": False, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": True, "state_dict_type": "SHARDED_STATE_DICT"}
    assert fsdp_config(Training(fsdp={}).fsdp)["reshard_after_forward"] is True


# -- the dtype rules ---------------------------------------------------------------------------------


def _args(bf16=True, deepspeed=None, fsdp=False):
    return SimpleNamespace(bf16=bf16, deepspeed=deepspeed, fsdp_plugin_args={"fsdp_version": 2} if fsdp else None,
                           hf_deepspeed_config=None, device=torch.device("cpu"))


def test_the_load_dtype_is_bf16_only_where_something_else_keeps_fp32_master_weights(monkeypatch):
    bf16, fp32 = torch.bfloat16, torch.float32
    assert sharded_load.load_dtype(_args(bf16=False)) == fp32  # CPU presets: as ever
    assert sharded_load.load_dtype(_args(bf16=False, deepspeed={"x": 1})) == fp32
    assert sharded_load.load_dtype(_args()) == fp32  # DDP: the weights are torch AdamW's master copy
    assert sharded_load.load_dtype(_args(), lora=True) == bf16  # a frozen base; PEFT keeps adapters in fp32
    assert sharded_load.load_dtype(_args(deepspeed={"x": 1})) == bf16  # DeepSpeed's bf16 optimizer: fp32 masters
    assert sharded_load.load_dtype(_args(fsdp=True)) == fp32  # no GPU: the stage refuses FSDP
    monkeypatch.setattr(sharded_load.torch.cuda, "is_available", lambda: True)
    assert sharded_load.load_dtype(_args(fsdp=True)) == bf16  # accelerate upcasts rank 0's copy before sharding
    assert sharded_load.frozen_dtype(_args()) == bf16 and sharded_load.frozen_dtype(_args(bf16=False)) == fp32


def test_the_hidden_size_comes_from_the_config_alone(tmp_path):
    from real_models import tiny_checkpoint

    assert sharded_load.model_hidden_size("preset:micro") > 0
    assert sharded_load.model_hidden_size(tiny_checkpoint(tmp_path / "ckpt")) == 64


# -- loading a real architecture ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory) -> Path:
    from real_models import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("qwen3") / "ckpt")


def _dpo_args(tmp_path, **train):
    from trl import DPOConfig

    from pai_distil_jobs.train.trainer import TrainSettings, training_arguments

    t = Training(batch_size=2, **train)
    return t, training_arguments(TrainSettings.of(t, hidden_size=64), tmp_path, 4, cls=DPOConfig)


def test_a_qwen3_checkpoint_loads_in_bf16_when_asked_and_dpo_gets_a_bf16_frozen_reference(tmp_path, qwen3):
    from pai_distil_jobs.train.dpo import load_policy_and_reference

    t, args = _dpo_args(tmp_path, bf16=True, lora={"r": 4})
    model, _ = sharded_load.load_trained(qwen3, args, lora=True)
    assert model.dtype == torch.bfloat16
    t, args = _dpo_args(tmp_path, bf16=True)
    policy, reference = load_policy_and_reference(str(qwen3), args, 0, t)
    assert policy.dtype == torch.float32 and reference.dtype == torch.bfloat16  # DDP: fp32 policy, bf16 reference
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    ref, pol = dict(reference.named_parameters()), dict(policy.named_parameters())
    assert all(torch.equal(ref[k], pol[k].to(torch.bfloat16)) for k in ref)
    t, args = _dpo_args(tmp_path)  # CPU defaults: fp32 as ever
    policy, reference = load_policy_and_reference(str(qwen3), args, 0, t)
    assert policy.dtype == reference.dtype == torch.float32


META = """
import json, sys, torch, torch.distributed as dist
from accelerate.utils import enable_fsdp_ram_efficient_loading
from pai_distil_jobs.models.models import load_model
dist.init_process_group("gloo")
enable_fsdp_ram_efficient_loading()  # as sharded_load.load_trained does under FSDP
model, _ = load_model(sys.argv[1], dtype=torch.bfloat16, meta=True)
whole, _ = load_model(sys.argv[1])
buffers = dict(whole.named_buffers())
print(json.dumps({"devices": sorted({p.device.type for p in model.parameters()}),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                  "buffers": all(b.device.type == "cpu" and torch.allclose(b.float(), buffers[n].float())
                                 for n, b in model.named_buffers()),
                  "eos": model.generation_config.eos_token_id == whole.generation_config.eos_token_id}))
"""


def _run(script: str, *argv, local_rank: int = 0) -> dict:
    """`script` in a process of its own (a process group of one, as torchrun starts it); its last line as JSON."""
    from conftest import free_socket

    with free_socket() as sock:
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": str(local_rank)}
    proc = subprocess.run([sys.executable, "-c", script, *map(str, argv)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_rank_whose_weights_fsdp_broadcasts_builds_the_model_on_meta(qwen3):
    out = _run(META, qwen3, local_rank=1)
    assert out == {"devices": ["meta"], "dtypes": ["torch.bfloat16"], "buffers": True, "eos": True}
    # rotary frequencies are real: FSDP broadcasts parameters, not non-persistent buffers


def test_meta_loading_outside_fsdp_is_refused(qwen3):
    from pai_distil_jobs.models.models import load_model

    with pytest.raises(ValueError, match="cpu_ram_efficient_loading"):
        load_model(qwen3, meta=True)


ZERO3 = """
import json, os, sys
from pathlib import Path
from trl import DPOConfig
from pai_distil.core.config import Training
from pai_distil_jobs.train import sharded_load
from pai_distil_jobs.train.dpo import load_policy_and_reference
from pai_distil_jobs.train.trainer import TrainSettings, training_arguments
t = Training(batch_size=2, bf16=True, deepspeed={"stage": 3})
args = training_arguments(TrainSettings.of(t, hidden_size=64), Path(sys.argv[2]), 4, cls=DPOConfig)
out = {}
for name, m in zip(("policy", "reference"), load_policy_and_reference(sys.argv[1], args, 0, t)):
    ps = list(m.parameters())
    out[name] = {"dtype": str(ps[0].dtype), "partitioned": all(hasattr(p, "ds_id") for p in ps),
                 "held": sum(p.numel() for p in ps), "whole": sharded_load.parameter_count(m),
                 "trained": any(p.requires_grad for p in ps)}
print(json.dumps(out))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_under_zero3_policy_and_reference_load_partitioned_in_bf16(tmp_path, qwen3):
    """TrainingArguments before from_pretrained: zero.Init applies, so no rank holds either model whole."""
    out = _run(ZERO3, qwen3, tmp_path / "ckpt")
    for name in ("policy", "reference"):
        assert out[name]["dtype"] == "torch.bfloat16" and out[name]["partitioned"], out
        assert out[name]["held"] == 0 and out[name]["whole"] > 9_000_000, out  # 9.8M: the 151k vocabulary
    assert out["policy"]["trained"] and not out["reference"]["trained"]


FROZEN_FSDP = """
import json, os, sys, types, torch, torch.distributed as dist
from pai_distil_jobs.models.models import load_model
from pai_distil_jobs.train import sharded_load
from pai_distil_jobs.train.teacher_topk import topk_at
dist.init_process_group("gloo")
sharded_load.fsdp_run = lambda args: True  # FSDP's own code path, on CPUs over gloo
args = types.SimpleNamespace(bf16=False, deepspeed=None, fsdp_plugin_args={}, hf_deepspeed_config=None,
                             device=torch.device("cpu"))
whole, _ = load_model(sys.argv[1])
model = sharded_load.shard_frozen(load_model(sys.argv[1])[0].eval().requires_grad_(False), args)
ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
labels = torch.tensor([[-100, -100, 7, 8, 9, 10], [-100, 12, 13, 14, 15, 16]])
with torch.inference_mode():
    got, want = (topk_at(m, ids, torch.ones_like(ids), labels, 4) for m in (model, whole.eval()))
w = model.get_decoder().layers[0].mlp.up_proj.weight
found = {"ids": torch.equal(got[0], want[0]), "lps": (got[1] - want[1]).nan_to_num().abs().max().item(),
         "sharded": type(w).__name__ == "DTensor" and w.to_local().shape[0] * 2 == w.shape[0]}
open(f"{sys.argv[2]}/rank{os.environ['RANK']}.json", "w").write(json.dumps(found))  # a file each: stdout interleaves
"""


def test_a_teacher_under_fsdp_keeps_its_layers_sharded_and_scores_as_the_whole_model(tmp_path, qwen3):
    """The decoder and the head called apart (top-k over chunks of positions) on per-layer FSDP units, 2 ranks."""
    from conftest import free_socket

    script = tmp_path / "frozen_fsdp.py"
    script.write_text(FROZEN_FSDP)
    with free_socket() as sock:
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(script), str(qwen3), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outs == [{"ids": True, "lps": 0.0, "sharded": True}] * 2  # still sharded after the forward pass


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_dpo_under_zero3_in_one_process_trains_and_saves_the_whole_model(tmp_path):
    """One process (no torchrun): the job still gets the process group zero.Init needs, TRL partitions the
    reference, and the final checkpoint and the held-out report come from whole models."""
    from conftest import pairs_file, run_job
    from safetensors.torch import load_file

    from pai_distil_jobs.models.models import build_preset

    base = tmp_path / "base"
    model, tok = build_preset("micro", seed=0)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cfg = {"train": {"max_steps": 2, "batch_size": 4, "log_every": 1, "deepspeed": {"stage": 3}}}
    out = tmp_path / "out"
    proc = run_job("dpo", cfg, out, inputs={"pairs": pairs_file(tmp_path / "p.jsonl"), "student": base}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = json.loads((out / "deepspeed_config.json").read_text())
    assert used["zero_optimization"]["stage"] == 3 and used["bf16"] == {"enabled": False}  # "auto" filled: CPU
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert json.loads((out / "report.json").read_text())["held_out"]["pairs"] > 0


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_on_policy_kd_under_zero3_scores_with_a_partitioned_teacher(tmp_path):
    """The local teacher loads under zero.Init and is prepared by DeepSpeed (`shard_frozen`); its decoder and
    head, called apart for the top-k, gather their partitions as they run."""
    from conftest import metric_records, run_job

    from pai_distil.core import oracle, world

    cots = tmp_path / "cots.jsonl"
    with open(cots, "w") as f:
        for p in world.generate_problems(8, 4, levels=[1]):
            thought, solution = world.split_thought(oracle.respond(p, 2))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    cfg = {"student": {"model": "preset:micro"},
           "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "max_length": 128,
                     "deepspeed": {"stage": 3}},
           "distill": {"mode": "on-policy", "lmbda": 0.5, "top_k": 8, "max_new_tokens": 8,
                       "teacher": {"model": "preset:micro", "seed": 7}}}
    proc = run_job("slow-thinking", cfg, tmp_path / "out", inputs={"cots": cots}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [r for r in metric_records(tmp_path / "out" / "metrics.jsonl") if "kd" in r]
    assert len(records) == 2 and all(0 < r["kd"] < 1 for r in records)
