"""`pai-distil plan` at the scale users bring: Qwen3-8B, 8,192 tokens, 8 GPUs of 80 GiB.

Each trace runs the stage's own loss code on fake tensors (about 30 s on two cores). The bounds are
the product's claim: with the defaults the job applies, SFT, white-box KD and the reward model fit
under 70 GiB per rank, and the printed peak agrees with an independent MemTracker trace of the same
step to 10 %.
"""

from __future__ import annotations

import pytest
import torch

from pai_distil.core.config import RewardModelConfig, SlowThinkingConfig
from pai_distil.core.model_shapes import shape
from pai_distil.run.plan import gpu_spec, plan_stage

SFT = {"student": {"model": "Qwen/Qwen3-8B"}, "train": {"max_length": 8192}}
CASES = {
    "sft": ("slow-thinking", SFT),
    "kd": ("slow-thinking", {**SFT, "distill": {"mode": "logits"}}),
    "reward-model": ("reward-model", {"model": {"model": "Qwen/Qwen3-8B"}, "train": {"max_length": 8192}}),
}


def _memtracker_peak(stage: str, config: dict) -> float:
    """The same step (models, sharding, batch, loss), traced by torch's plain MemTracker alone (GiB)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from pai_distil_jobs.plan.steps import STEPS
    from pai_distil_jobs.plan.trace import GIB, fake_mode, fake_world

    model_cls = SlowThinkingConfig if stage == "slow-thinking" else RewardModelConfig
    cfg = model_cls.model_validate(config)
    role = "model" if stage == "reward-model" else "student"
    fake_world(8)
    with fake_mode():
        step = STEPS[stage](cfg, {role: shape("qwen3-8b")}, 8, False)
        tracker = MemTracker()
        tracker.track_external(step.root)
        with tracker:
            step.run().backward()
        peak = tracker.get_tracker_snapshot("peak")
    return next(iter(peak.values()))["Total"] / GIB


@pytest.mark.parametrize("case", list(CASES))
def test_qwen3_8b_at_8k_fits_eight_80gib_gpus_and_agrees_with_memtracker(case):
    stage, config = CASES[case]
    result = plan_stage(stage, config, nodes=1, gpus=8, gpu=gpu_spec("h800"))
    assert result["processes"] == 8 and result["sharding"].startswith("FSDP2")
    assert result["fits"] and result["peak_gib"] <= 70, result["memory_gib"]
    # the trained model's own state is there, sharded 8 ways: 8.2 B parameters in fp32 and Adam's two moments
    assert 3.5 < result["memory_gib"]["optimizer"] / 2 < 4.2
    independent = _memtracker_peak(stage, config)
    assert abs(result["traced_peak_gib"] - independent) <= 0.1 * independent, (result["traced_peak_gib"], independent)
    # FLOPs: at least 6 N per trained token (forward and backward), attention on top
    tokens = result["micro_batch"] * result["accumulation"] * result["tokens_per_row"]
    assert result["flops_per_step"] >= 6 * 6.9e9 * tokens
    assert result["gpu_hours"] > 0 and result["step_seconds"] > 0


def test_the_default_micro_batch_shrinks_with_the_row_length():
    from pai_distil.core.config import Training

    for length, (micro, accumulation) in {8192: (2, 2), 16384: (1, 4), 32768: (1, 4)}.items():
        train, filled = Training(max_length=length).by_kind(False, 8, True)
        assert train.batch_size // (8 * train.gradient_accumulation_steps) == micro
        assert train.gradient_accumulation_steps == accumulation and filled["fsdp"].sharding == "full_shard"
    train, filled = Training().by_kind(True, 1, False)  # presets: as before
    assert train.gradient_accumulation_steps == 1 and "fsdp" not in filled


def test_attention_flops_are_counted_on_the_cpu_kernel():
    from torch.utils.flop_counter import FlopCounterMode

    import pai_distil_jobs.plan.trace  # noqa: F401  (registers the CPU kernels' formulas)

    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    forward = 4 * 1 * 2 * 64 * 64 * 16
    assert counter.get_total_flops() == forward * 3


def test_the_knob_names_as_many_settings_as_it_takes_cheapest_first():
    from types import SimpleNamespace

    from pai_distil.core.config import Training
    from pai_distil_jobs.plan.estimate import knob

    step = SimpleNamespace(micro=4, accumulation=1, tokens_per_row=8192)
    ddp = Training(max_length=8192, gradient_checkpointing=True)
    memory = {"parameters": 30.0, "gradients": 60.0, "optimizer": 60.0, "activations": 100.0, "temporaries": 20.0}
    # 270 GiB on 80: micro-batch 1 saves 90, sharding 8 ways 131 of the 150 GiB of state
    assert knob(step, ddp, memory, 270, 80, 8) == ("set train.gradient_accumulation_steps: 4 (micro-batch 1) and "
                                                    "train.fsdp: {sharding: full_shard}")
    assert knob(step, ddp, memory, 150, 80, 8) == "set train.gradient_accumulation_steps: 4 (micro-batch 1)"
    one = SimpleNamespace(micro=1, accumulation=4, tokens_per_row=32768)
    sharded = Training(max_length=32768, gradient_checkpointing=True, fsdp={"offload": False})
    assert knob(one, sharded, memory, 100, 80, 8) == "set train.fsdp.offload: true"
    assert knob(one, sharded, memory, 200, 80, 8) == ("set train.fsdp.offload: true; that still leaves 60 GiB over: "
                                                       "lower train.max_length below 32768, use train.lora, or use "
                                                       "more GPUs")
