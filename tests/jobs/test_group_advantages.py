"""GRPO rewards per completion and the settings that turn them into group advantages.

Where the advantages are computed: not in this project. `pai_distil_jobs.train.grpo` hands TRL's
`GRPOTrainer` the reward functions (`GroupRewards.functions()`: functions and weights) and
`grpo_arguments` maps `grpo.scale_rewards` and `group_size` onto TRL's config; the group mean / std
normalisation itself is inline in TRL's `GRPOTrainer._generate_and_score_completions` (trl 1.16,
`trl/trainer/grpo_trainer.py`, "sum_then_normalize": advantages = (r - group mean) / (group std + 1e-4),
the division dropped with scale_rewards="none"), with no separately callable function. So this file
tests what is callable here: the per-completion rewards and weights (the advantages' input, exact
values) and the config TRL receives (the advantages' mode).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from pai_distil.core.config import GRPOConfig  # noqa: E402
from pai_distil_jobs.train.grpo import GroupRewards, grpo_arguments  # noqa: E402
from pai_distil_jobs.train.trainer import TrainSettings  # noqa: E402

VOCAB = ["The answer is ", "\\boxed{4}", "\\boxed{5}", "hmm", "<|im_end|>", "<think>", "</think>"]
END = VOCAB.index("<|im_end|>")


class WordTokenizer:
    """One token per entry of VOCAB: what GroupRewards needs of a tokenizer."""

    def decode(self, ids, skip_special_tokens=False):
        assert skip_special_tokens is False
        return "".join(VOCAB[i] for i in ids)

    def convert_ids_to_tokens(self, i):
        return VOCAB[i]


ROW = {"verifier": "exact", "answer": "4", "prompt": "2+2?", "opened": ""}
RIGHT = [0, 1, END]  # The answer is \boxed{4}<|im_end|>
WRONG = [0, 2, END]
CUT = [0, 1]  # right, but no end token: cut at max_completion_length
NONE = [3, END]  # "hmm": the exact verifier reads its last line as the answer
EMPTY: list[int] = []


def rewards_for(cfg: GRPOConfig, scorer=None, rows=(ROW, ROW)):
    log: list[str] = []
    return GroupRewards(list(rows), cfg, WordTokenizer(), [END], scorer=scorer, log=log.append), log


def call(fn, completion_ids, index, step=0):
    logged: dict[str, float] = {}
    out = fn(completion_ids=completion_ids, index=index, log_metric=logged.__setitem__,
             trainer_state=SimpleNamespace(global_step=step))
    return out, logged


def test_correctness_per_completion_and_per_group():
    r, _ = rewards_for(GRPOConfig(problems={"n": 1}, group_size=3))
    # group 0: all right; group 1: one right of three
    out, logged = call(r.correct, [RIGHT, RIGHT, CUT, WRONG, RIGHT, NONE], [0, 0, 0, 1, 1, 1])
    assert out == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # a cut completion is still judged on its text
    assert logged == {"accuracy": 4 / 6, "solved_groups": 1.0, "mixed_groups": 0.5}
    out, logged = call(r.correct, [WRONG, NONE, WRONG, WRONG], [0, 0, 1, 1])
    assert out == [0.0, 0.0, 0.0, 0.0]
    assert logged == {"accuracy": 0.0, "solved_groups": 0.0, "mixed_groups": 0.0}


def test_cut_and_unreadable_completions():
    r, log = rewards_for(GRPOConfig(problems={"n": 1}, group_size=2, truncation_warning=0.4))
    out, logged = call(r.overlong, [RIGHT, CUT, EMPTY, NONE], [0, 0, 1, 1])
    assert out == [0.0, 1.0, 1.0, 0.0]
    assert logged == {"truncated": 0.5}
    assert log == ["warning: 50% of the completions of step 1 reached max_completion_length=160 and were cut; "
                   "raise it, or set reward.overlong_penalty"]
    call(r.overlong, [CUT, CUT], [0, 0], step=5)  # within 10 steps of the last warning: silent
    call(r.overlong, [CUT, CUT], [0, 0], step=10)
    assert len(log) == 2 and "step 11" in log[1]
    out, logged = call(r.no_answer, [RIGHT, EMPTY, [0, END], NONE], [0, 0, 1, 1])
    assert out == [0.0, 1.0, 0.0, 0.0]  # "The answer is " is a last line too, for the exact verifier
    assert logged == {"no_answer": 0.25}


def test_text_drops_end_tokens_and_prefixes_the_opened_thought():
    r, _ = rewards_for(GRPOConfig(problems={"n": 1}), rows=[{**ROW, "opened": "<think>\n"}])
    assert r.text(0, [3, 6, 1, END]) == "<think>\nhmm</think>\\boxed{4}"


def test_weights_and_the_weighted_reward_trl_normalises():
    cfg = GRPOConfig(problems={"n": 1}, group_size=2,
                     reward={"correct_weight": 2.0, "rm_weight": 0.5, "overlong_penalty": 0.25, "format_penalty": 1.0})
    r, _ = rewards_for(cfg, scorer=lambda prompts, completions: [float(len(c)) for c in completions])
    funcs, weights = r.functions()
    assert [f.__name__ for f in funcs] == ["correct", "overlong", "no_answer", "reward_model"]
    assert weights == [2.0, -0.25, -1.0, 0.5]
    ids, index = [RIGHT, CUT, WRONG, NONE], [0, 0, 1, 1]
    columns = [call(f, ids, index)[0] for f in funcs]
    assert columns[3] == [len("The answer is \\boxed{4}"), len("The answer is \\boxed{4}"),
                          len("The answer is \\boxed{5}"), len("hmm")]
    total = [sum(w * c[i] for w, c in zip(weights, columns)) for i in range(4)]
    assert total == [2.0 + 0.5 * 23, 2.0 - 0.25 + 0.5 * 23, 0.5 * 23, 0.5 * 3]

    no_rm = GRPOConfig(problems={"n": 1}, reward={"rm_weight": 0})
    assert rewards_for(no_rm)[0].functions()[1] == [1.0, -0.0, -0.0]  # no scorer: no reward-model function


@pytest.mark.parametrize("scale, trl_mode", [(True, "group"), (False, "none")])
def test_scale_rewards_reaches_trl_as_group_or_none(tmp_path, scale, trl_mode):
    cfg = GRPOConfig(problems={"n": 1}, scale_rewards=scale, group_size=4, kl_coef=0.1)
    settings = TrainSettings.of(cfg.train, batch_size=cfg.train.prompts_per_step * cfg.group_size)
    args = grpo_arguments(cfg, settings, tmp_path, n_problems=3, reward_weights=[1.0, -0.0, -0.0])
    assert args.scale_rewards == trl_mode
    assert args.multi_objective_aggregation == "sum_then_normalize"  # weighted sum first, then the group normalisation
    assert (args.num_generations, args.reward_weights, args.beta, args.num_iterations) == (4, [1.0, -0.0, -0.0], 0.1, 1)


# -- defaults at real scale, and the arguments TRL receives ---------------------------------------------------


@pytest.mark.parametrize("completion, world, gpus, accumulation", [
    (160, 8, True, 1),  # 672-token rows: 8 completions per rank fit one micro-batch of 16,384 tokens
    (8192, 8, True, 8),  # 8,704 tokens: one completion a micro-batch, 64 / 8 ranks = 8 each
    (32768, 8, True, 8),
    (8192, 1, True, 64),
    (1536, 2, False, 4),  # 2,048 tokens: 8 a micro-batch, 32 per rank
])
def test_a_checkpoint_is_sharded_and_its_micro_batch_holds_at_most_16k_tokens(completion, world, gpus, accumulation):
    cfg = GRPOConfig(problems={"n": 1}, max_completion_length=completion)
    train, filled = cfg.train.by_kind(False, world, gpus)
    fsdp = {"fsdp": {"sharding": "full_shard", "offload": False}} if gpus and world > 1 else {}
    assert {k: getattr(v, "model_dump", lambda: v)() for k, v in filled.items()} == {
        "learning_rate": 1e-6, "gradient_checkpointing": True, "gradient_accumulation_steps": accumulation,
        "warmup_steps": 5, **fsdp}
    assert train.gradient_accumulation_steps == accumulation and (train.fsdp is not None) == bool(fsdp)


def test_presets_and_chosen_settings_keep_their_values():
    cfg = GRPOConfig(problems={"n": 1}, max_completion_length=8192)
    assert cfg.train.by_kind(True, 8, True)[1] == {"learning_rate": 2e-4, "gradient_checkpointing": False,
                                                   "gradient_accumulation_steps": 1, "warmup_steps": 5}
    for chosen in ({"lora": {}}, {"deepspeed": {"stage": 3}}, {"fsdp": {"sharding": "shard_grad_op"}},
                   {"gradient_accumulation_steps": 2}):
        cfg = GRPOConfig(problems={"n": 1}, max_completion_length=8192, train=chosen)
        train, filled = cfg.train.by_kind(False, 8, True)
        assert "fsdp" not in filled or "gradient_accumulation_steps" in chosen
        assert {k: getattr(train, k) for k in chosen} == {k: getattr(cfg.train, k) for k in chosen}
    with pytest.raises(ValueError, match="choose one"):
        GRPOConfig(train={"deepspeed": {}, "fsdp": {}})


def test_trl_arguments_for_a_checkpoint_with_vllm_rollouts(tmp_path):
    cfg = GRPOConfig(problems={"n": 1}, max_completion_length=8192, rollout="vllm", vllm_gpu_memory=0.45,
                     vllm_tensor_parallel_size=2, kl_coef=0.04)
    train, _ = cfg.train.by_kind(False, 1, False)
    settings = TrainSettings.of(train, batch_size=train.prompts_per_step * cfg.group_size)
    args = grpo_arguments(cfg, settings, tmp_path, n_problems=100, reward_weights=[1.0, -0.0, -0.0], prompt_tokens=300)
    got = {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size",
        "num_generations", "learning_rate", "gradient_checkpointing", "beta", "max_completion_length", "use_vllm",
        "vllm_mode", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_max_model_length")}
    assert got == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 64, "steps_per_generation": 64,
                   "generation_batch_size": 64, "num_generations": 8, "learning_rate": 1e-6,
                   "gradient_checkpointing": True, "beta": 0.04, "max_completion_length": 8192, "use_vllm": True,
                   "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.45, "vllm_tensor_parallel_size": 2,
                   "vllm_max_model_length": 300 + 8192}
