"""Padding-free training without packing, and length-grouped batches: same loss as padded batches,
attention kept within each row, and less padding on mixed-length rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import metric_records, run_job

from pai_distil.core import oracle as teacher, world


def mixed_cots(path: Path, n: int = 8) -> Path:
    """Rows of very different lengths: verbosity 1 to 9 over levels 1 to 3."""
    with open(path, "w") as f:
        for i, p in enumerate(world.generate_problems(n, 4, levels=[1, 2, 3])):
            thought, solution = world.split_thought(teacher.respond(p, 1 + i % 9))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    return path


def _batch(n: int = 4):
    from pai_distil_jobs.models.models import build_preset
    from pai_distil_jobs.train.sft_data import encode_rows

    model, tok = build_preset("micro", seed=0)
    rows = [{"messages": [{"role": "user", "content": p.text},
                          {"role": "assistant", "content": teacher.respond(p, 1 + 3 * i)}]}
            for i, p in enumerate(world.generate_problems(n, 4, levels=[1, 2]))]
    return model, tok, encode_rows(tok, rows, 512, log=lambda m: None)


def test_a_flattened_batch_gives_the_padded_batchs_loss_and_gradient():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok, examples = _batch()
    assert len({len(e["input_ids"]) for e in examples}) > 1  # padding there is real
    feats = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    losses, grads = [], []
    for free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=free)(feats)
        assert ("attention_mask" in batch) != free and (batch["input_ids"].shape[0] == 1) == free
        model.zero_grad()
        out = model(**batch, use_cache=False)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(model.model.embed_tokens.weight.grad.clone())
    assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_flattened_row_attends_only_to_itself():
    """The second row's logits are the same whether the first row is before it in the flat batch or not.
    (Without a KV cache: with one, transformers reads no row boundaries from the position ids; TRL's
    compute_loss passes use_cache=False.)"""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok, examples = _batch(2)
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    pair = collate([{"input_ids": e["input_ids"]} for e in examples])
    alone = collate([{"input_ids": examples[1]["input_ids"]}])
    with torch.no_grad():
        both = model(input_ids=pair["input_ids"], position_ids=pair["position_ids"], use_cache=False).logits[0]
        one = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"], use_cache=False).logits[0]
    assert torch.allclose(both[len(examples[0]["input_ids"]):], one, atol=1e-5)


def test_padding_free_without_flash_attention_trains_padded_batches_and_says_so_in_one_line(tmp_path):
    """On CPU (sdpa) a flattened batch would attend through a dense mask over every row: padded batches,
    one note, the same first-step loss as a run that never asked."""
    path = mixed_cots(tmp_path / "cots.jsonl")
    first = {}
    for free in (False, True):
        # one batch holds every row: both runs see the same rows at step 1, whatever their order
        cfg = {"student": {"model": "preset:micro"},
               "train": {"max_steps": 2, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "padding_free": free}}
        out = tmp_path / f"free-{free}"
        proc = run_job("slow-thinking", cfg, out, inputs={"cots": path})
        assert proc.returncode == 0, proc.stderr[-3000:]
        notes = [line for line in proc.stdout.splitlines() if "train.padding_free" in line]
        assert notes == ([] if not free else [
            "note: train.padding_free needs flash-attention's varlen kernel (flash-attn on GPUs); sdpa would build a "
            "dense mask over the whole flattened batch, so batches are padded and length-grouped instead. Install "
            "flash-attn in the image and set train.attn_implementation: auto, or drop train.padding_free"]), notes
        first[free] = metric_records(out / "metrics.jsonl")[0]["loss"]
    assert first[True] == pytest.approx(first[False], abs=1e-5)


@pytest.mark.parametrize("free, packing, attn, flat, said", [
    (True, False, "flash_attention_2", True, "padding-free: each micro-batch is one flat sequence"),
    (True, False, "flex_attention", True, "padding-free: each micro-batch is one flat sequence"),
    (True, False, "sdpa", False, "note: train.padding_free needs flash-attention's varlen kernel"),
    (True, False, "eager", False, "note: train.padding_free needs flash-attention's varlen kernel"),
    (True, True, "sdpa", True, None),  # packed rows carry their own position ids
    (False, True, "sdpa", False, None),
    (False, False, "flash_attention_2", False, None),
])
def test_batches_are_flattened_only_where_a_varlen_kernel_keeps_rows_apart(free, packing, attn, flat, said):
    from pai_distil.core.config import Training
    from pai_distil_jobs.train.sft_train import padding_free_mode

    lines = []
    assert padding_free_mode(Training(padding_free=free, packing=packing), attn, lines.append) is flat
    assert [line[:len(said)] for line in lines] == ([said] if said else [])


def _padding_share(sampler, lengths: list[int], batch: int) -> float:
    order = list(sampler)
    padded = real = 0
    for s in range(0, len(order) - batch + 1, batch):
        widths = [lengths[i] for i in order[s:s + batch]]
        padded, real = padded + max(widths) * batch, real + sum(widths)
    return 1 - real / padded


def test_length_grouping_batches_similar_lengths_and_cuts_padding():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(200, 2000), rng.randint(4000, 32000)]) for _ in range(4000)]
    torch.manual_seed(0)
    shuffled = _padding_share(torch.utils.data.RandomSampler(range(len(lengths))), lengths, 8)
    grouped = _padding_share(LengthGroupedSampler(8, lengths=lengths), lengths, 8)
    assert shuffled > 0.3 and grouped < 0.05, (shuffled, grouped)


def test_sft_batches_are_length_grouped_unless_a_curriculum_or_flattened():
    from pai_distil_jobs.train.sft_train import sampling

    assert sampling(keep_order=False, flattened=False) == "group_by_length"
    assert sampling(keep_order=True, flattened=False) == "sequential"
    assert sampling(keep_order=False, flattened=True) == "random"


def test_the_length_grouped_order_depends_on_seed_and_epoch_only_so_a_resume_replays_it():
    from pai_distil_jobs.train.trainer import SeededLengthGroupedSampler

    lengths = [random.Random(i).randint(10, 5000) for i in range(400)]
    a, b = SeededLengthGroupedSampler(4, lengths, seed=3), SeededLengthGroupedSampler(4, lengths, seed=3)
    torch.manual_seed(1)
    first = list(a)
    torch.manual_seed(2)  # the global RNG differs after a resume
    assert list(b) == first
    b.set_epoch(1)
    assert list(b) != first and sorted(b) == sorted(first)
    assert _padding_share(a, lengths, 4) < 0.05


@pytest.mark.parametrize("free", [False, True])
def test_packed_rows_train_with_and_without_padding_free(tmp_path, free):
    cfg = {"student": {"model": "preset:micro"},
           "train": {"max_steps": 2, "batch_size": 2, "max_length": 256, "warmup_steps": 1, "log_every": 1,
                     "packing": True, "padding_free": free}}
    out = tmp_path / "out"
    proc = run_job("slow-thinking", cfg, out, inputs={"cots": mixed_cots(tmp_path / "cots.jsonl")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in metric_records(out / "metrics.jsonl")] == [1, 2]
