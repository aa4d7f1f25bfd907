"""Checkpoints damaged after their marker was written: zeros in the newest one's weights, or the
file cut short. Resume must set that checkpoint aside in one line and go on from the previous
one, ending with the weights of a run that was never stopped; never load it, never crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pai_distil.core import world


def _zeros(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(bytes(64))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _train(tmp_path: Path, ckpt_dir: Path, max_steps: int, log):
    """The reward model on one pair; one schedule of 4 steps, whatever max_steps."""
    from pai_distil_jobs.train.reward import encode, load_reward_model, reward_trainer
    from pai_distil_jobs.train.trainer import TrainSettings, fit

    problem = world.generate_problems(1, seed=5, levels=[1])[0]
    right = f"<think>\n{problem.start} -> {problem.answer}\n</think>\n\nThe answer is \\boxed{{{problem.answer}}}."
    wrong = right.replace(f"{{{problem.answer}}}", f"{{{(int(problem.answer) + 1) % 10}}}")
    model, tok = load_reward_model("preset:micro", seed=0)
    ex = {"chosen": encode(tok, problem.text, right, 128), "rejected": encode(tok, problem.text, wrong, 128),
          "chosen_score": 1.0, "rejected_score": 0.0}
    settings = TrainSettings(max_steps=max_steps, schedule_steps=4, batch_size=2, learning_rate=1e-2,
                             warmup_steps=1, checkpoint_every=2)
    trainer, callback = reward_trainer(model, tok, [ex] * 4, settings, ckpt_dir, tmp_path / f"{ckpt_dir.name}.jsonl",
                                       log=lambda *_: None)
    fit(trainer, callback, ckpt_dir, log=log)
    return model


@pytest.mark.parametrize("damage", [_zeros, _truncate], ids=["zeros", "truncated"])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path, damage):
    import torch

    straight = _train(tmp_path, tmp_path / "straight", 4, log=lambda *_: None)
    stopped = tmp_path / "stopped"
    _train(tmp_path, stopped, 3, log=lambda *_: None)
    damage(stopped / "checkpoint-3" / "model.safetensors")
    lines: list[str] = []
    resumed = _train(tmp_path, stopped, 4, log=lines.append)
    assert [x for x in lines if "set aside" in x] == [
        next(x for x in lines if x.startswith("checkpoint checkpoint-3 set aside as rejected-checkpoint-3: "))]
    assert "resuming from checkpoint checkpoint-2 (step 2 of 4)" in lines
    assert (stopped / "rejected-checkpoint-3" / "model.safetensors").exists()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_large_files_are_checked_by_size_and_sampled_blocks(tmp_path, monkeypatch):
    from pai_distil_jobs.train import checkpoints

    monkeypatch.setattr(checkpoints, "WHOLE_BYTES", 1 << 20)
    ckpt = tmp_path / "checkpoint-5"
    ckpt.mkdir()
    big = ckpt / "optimizer.pt"
    big.write_bytes(os.urandom(5 << 20))
    (ckpt / checkpoints.MANIFEST).write_text(json.dumps(checkpoints.manifest(ckpt)))
    (ckpt / checkpoints.COMPLETE).write_text("{}")
    assert checkpoints.problem(ckpt) is None
    with open(big, "r+b") as f:  # the tail, where a torch zip keeps its directory
        f.seek(-100, os.SEEK_END)
        f.write(bytes(100))
    assert checkpoints.problem(ckpt) == "optimizer.pt does not match its checksum"
    assert checkpoints.resumable_checkpoint(tmp_path, log=lambda *_: None) is None
    assert [p.name for p in tmp_path.iterdir()] == ["rejected-checkpoint-5"]
