"""`train.extra`, `epochs`, `lr_scheduler` and `optim` as the job hands them to transformers."""

from __future__ import annotations

import pytest

from pai_distil.core.config import Training
from pai_distil.core.contract import JobError


def test_epochs_extra_optim_and_scheduler_reach_the_arguments_and_the_run(tmp_path):
    from pai_distil_jobs.train.reward import encode, load_reward_model, reward_trainer
    from pai_distil_jobs.train.trainer import TrainSettings, fit, training_arguments

    train = Training(epochs=2, batch_size=2, learning_rate=1e-2, lr_scheduler="linear", optim="adamw_torch",
                     extra={"adam_beta1": 0.8, "max_grad_norm": 0.5}, checkpoint_every=10)
    settings = TrainSettings.of(train)
    args = training_arguments(settings, tmp_path / "ckpt", 5)
    assert (settings.max_steps, args.max_steps, settings.warmup_steps) == (4, 4, 0)  # 5 rows // 2 = 2 a pass
    assert (args.adam_beta1, args.max_grad_norm, args.optim, args.lr_scheduler_type) == (0.8, 0.5, "adamw_torch",
                                                                                          "linear")
    model, tok = load_reward_model("preset:micro", seed=0)
    ex = {"chosen": encode(tok, "1 + 1?", "2", 64), "rejected": encode(tok, "1 + 1?", "3", 64),
          "chosen_score": 1.0, "rejected_score": 0.0}
    trainer, callback = reward_trainer(model, tok, [ex] * 5, settings, tmp_path / "ckpt", tmp_path / "m.jsonl",
                                       log=lambda *_: None, args=args)
    assert fit(trainer, callback, tmp_path / "ckpt", log=lambda *_: None)
    assert trainer.state.global_step == 4
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0  # transformers' linear ends at 0; ours stops at a tenth


def test_extra_unknown_to_the_library_or_set_by_the_stage_fails_in_one_line(tmp_path):
    from trl import SFTConfig

    from pai_distil_jobs.train.trainer import TrainSettings, training_arguments

    with pytest.raises(JobError, match=r"train.extra.adam_epsilonn: TrainingArguments has no field 'adam_epsilonn'; "
                                       r"did you mean 'adam_epsilon'\?"):
        training_arguments(TrainSettings(max_steps=2, batch_size=2, extra={"adam_epsilonn": 1e-6}), tmp_path, 4)
    with pytest.raises(JobError, match="train.extra sets packing, which this stage sets from its config"):
        training_arguments(TrainSettings(max_steps=2, batch_size=2, extra={"packing": True}), tmp_path, 4,
                           cls=SFTConfig, packing=False)


def test_validate_refuses_every_argument_the_job_sets_but_those_extra_may_change(tmp_path):
    """The client's list (no transformers there) against what training_arguments really passes."""
    from transformers import TrainingArguments

    from pai_distil.core.config.training import SET_BY_US
    from pai_distil_jobs.train.passthrough import EXTRA_MAY_CHANGE
    from pai_distil_jobs.train.trainer import TrainSettings, training_arguments

    seen: dict = {}

    def recording(**kw):
        seen.update(kw)
        return TrainingArguments(**kw)

    training_arguments(TrainSettings(max_steps=2, batch_size=2, gradient_checkpointing=True), tmp_path, 4,
                       cls=recording)
    assert set(seen) - EXTRA_MAY_CHANGE <= SET_BY_US, set(seen) - EXTRA_MAY_CHANGE - SET_BY_US
    assert not EXTRA_MAY_CHANGE & SET_BY_US
