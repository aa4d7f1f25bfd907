"""GRPO on TRL's `GRPOTrainer`: our verifiers, reward model and penalties as its reward functions.

TRL gives what a real checkpoint on GPUs needs and a hand-written loop lacked: log-probabilities
of the completion tokens only (`logits_to_keep` and a selective log-softmax, not a full-vocabulary
log-softmax over every position, which at Qwen's 152 k vocabulary is ~10 GB per tensor), updates
in micro-batches with gradient accumulation, bf16, gradient checkpointing, LoRA, vLLM rollouts
and its loss variants. We add the job contract (`JobTrainerMixin`: atomic checkpoints, SIGTERM,
the schedule, the divergence check) and the numbers docs/benchmarks.md documents.

Each optimizer step generates its own rollouts (`steps_per_generation` = accumulation steps, one
pass over them): no buffered completions straddle a checkpoint, so a resumed run, whose RNG state
transformers restores from the checkpoint, samples the same completions a run that never stopped
would have. Updates are on-policy, so the importance ratio is 1 and the clipping never binds.

reward = correct_weight x correctness + rm_weight x reward-model score - overlong_penalty x cut
- format_penalty x no readable answer (TRL's `reward_weights` over the functions below).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager

from pai_distil.core.config import GRPOConfig
from pai_distil.core.config.grpo import PROMPT_TOKENS
from pai_distil.core.verifiers import check

TRUNCATION_WARN_EVERY = 10  # steps between two warnings about cut completions
# TRL's metric names -> ours (metrics.jsonl, summary.json); the rest of TRL's are left out
RENAMED = {"completions/mean_length": "length"}
KEPT = {"reward", "kl", "entropy", "num_tokens", "accuracy", "truncated", "no_answer", "rm_score", "solved_groups",
        "mixed_groups"}


class GroupRewards:
    """The reward functions of one GRPO run, in TRL's calling convention: each takes the batch's
    `completion_ids` and the dataset's `index` column (the problem row) and returns one value per
    completion, logging its share of the step's numbers through `log_metric`.

    Args:
        rows (list[dict]): the problems, each with its user message as `prompt` and `opened`, the text
            the generation prompt opened the reply with (R1-Distill's `<think>`).
        cfg (GRPOConfig): weights, penalties and the truncation warning.
        tokenizer: decodes completions as `generation.generate` does.
        stops (list[int]): the end tokens; a completion that ends without one was cut.
        scorer (callable, optional): (prompts, completions) -> standardised reward-model scores.
        limits (verify.sandbox.Limits, optional): bounds of each run of a code answer.
        log (callable): where the truncation warning goes.
    """

    def __init__(self, rows: list[dict], cfg: GRPOConfig, tokenizer, stops: list[int],
                 scorer: Callable[[list[str], list[str]], list[float]] | None = None, limits=None, log=print):
        self.rows, self.cfg, self.tokenizer, self.stops, self.scorer, self.log = rows, cfg, tokenizer, stops, scorer, log
        self.limits = limits
        self._stop_texts = [tokenizer.convert_ids_to_tokens(i) for i in stops]
        self._warned_at = -TRUNCATION_WARN_EVERY
        self._checked: tuple[list, list] | None = None  # (the batch's completion_ids, their verdicts)

    def functions(self) -> tuple[list[Callable], list[float]]:
        """The reward functions and their weights (TRL's `reward_funcs` and `reward_weights`)."""
        funcs = [self.correct, self.overlong, self.no_answer] + ([self.reward_model] if self.scorer else [])
        return funcs, self.weights(self.cfg, self.scorer is not None)

    @staticmethod
    def weights(cfg: GRPOConfig, scored: bool) -> list[float]:
        """The weights of `functions()`, known before the model loads (TRL's arguments come first)."""
        w = cfg.reward
        return [w.correct_weight, -w.overlong_penalty, -w.format_penalty] + ([w.rm_weight] if scored else [])

    def text(self, index: int, ids: list[int]) -> str:
        """A completion as the verifier and the reward model read it: end tokens dropped, special
        tokens such as `<think>` kept, prefixed with what the generation prompt opened."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for s in self._stop_texts:
            text = text.replace(s, "")
        return self.rows[index]["opened"] + text

    def verdicts(self, index, completion_ids) -> list:
        """The verifier's verdicts on a batch, once per batch (code answers run programs)."""
        if self._checked is None or self._checked[0] is not completion_ids:
            self._checked = (completion_ids, [check(self.rows[i], self.text(i, ids), self.limits)
                                              for i, ids in zip(index, completion_ids)])
        return self._checked[1]

    def correct(self, completion_ids, index, log_metric, **_) -> list[float]:
        verdicts = [float(v.correct) for v in self.verdicts(index, completion_ids)]
        groups: dict[int, list[float]] = defaultdict(list)
        for i, v in zip(index, verdicts):
            groups[i].append(v)
        log_metric("accuracy", sum(verdicts) / len(verdicts))
        log_metric("solved_groups", sum(max(g) for g in groups.values()) / len(groups))
        log_metric("mixed_groups", sum(min(g) != max(g) for g in groups.values()) / len(groups))
        return verdicts

    def no_answer(self, completion_ids, index, log_metric, **_) -> list[float]:
        missing = [float(v.extracted is None) for v in self.verdicts(index, completion_ids)]
        log_metric("no_answer", sum(missing) / len(missing))
        return missing

    def overlong(self, completion_ids, log_metric, trainer_state=None, **_) -> list[float]:
        cut = [float(not ids or ids[-1] not in self.stops) for ids in completion_ids]
        share = sum(cut) / len(cut)
        log_metric("truncated", share)
        step = trainer_state.global_step if trainer_state is not None else 0
        if share > self.cfg.truncation_warning and step - self._warned_at >= TRUNCATION_WARN_EVERY:
            self._warned_at = step
            self.log(f"warning: {share:.0%} of the completions of step {step + 1} reached max_completion_length="
                     f"{self.cfg.max_completion_length} and were cut; raise it, or set reward.overlong_penalty")
        return cut

    def reward_model(self, completion_ids, index, log_metric, **_) -> list[float]:
        scores = self.scorer([self.rows[i]["prompt"] for i in index],
                             [self.text(i, ids) for i, ids in zip(index, completion_ids)])
        log_metric("rm_score", sum(scores) / len(scores))
        return [float(s) for s in scores]


COMPLETIONS = "completions.jsonl"  # in the output: a sample of each logged step's completions, with their rewards
COMPLETIONS_PER_STEP = 8


def sample_completions(logs: dict, step: int, names: list[str], weights: list[float],
                       limit: int = COMPLETIONS_PER_STEP) -> list[dict]:
    """The first `limit` completions of a step's batch (whole groups first: TRL orders a batch by prompt), as
    records: prompt, completion, each reward function's value, the weighted reward and the advantage.

    logs: TRL's `GRPOTrainer._logs` (the latest generation batch, gathered from every process);
    names, weights: the reward functions' names and weights, in TRL's order."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
        if i == limit:
            break
        values = {n: _finite(logs["rewards"][n][i]) for n in names}
        total = sum(w * v for w, v in zip(weights, values.values()) if v is not None)
        rows.append({"step": step, "prompt": _text(prompt), "completion": _text(completion),
                     "reward": round(total, 6), "rewards": values, "advantage": _finite(logs["advantages"][i])})
    return rows


def _text(turns) -> str:
    """A prompt or completion as TRL logs it: text, or a conversation whose last turn is the one we want."""
    return turns if isinstance(turns, str) else turns[-1]["content"]


def _finite(x: float) -> float | None:
    return None if x != x or x in (float("inf"), float("-inf")) else round(float(x), 6)  # JSON has no NaN


def append_completions(path, records: list[dict], resumed: bool) -> None:
    """Add a step's records to `path`; on the first write of a resumed run, first drop the records of the
    steps after its checkpoint (the run trains them again)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not records:
        return
    if resumed and path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < records[0]["step"]]
        path.write_text("".join(line + "\n" for line in kept))
    with open(path, "a") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class EpochSeededSampler:
    """TRL's `RepeatSampler` draws every epoch's order from one generator seeded once, so a run resumed
    after its first epoch (a new sampler) would replay the first epoch's problems. Reseeding it from
    (seed, epoch) when transformers announces the epoch (`set_epoch`) makes each epoch's order a
    function of the epoch alone: the same whether the run stopped or not."""

    def __init__(self, inner):
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        if getattr(self.inner, "seed", None) is not None and getattr(self.inner, "generator", None) is not None:
            self.inner.generator.manual_seed(self.inner.seed + epoch)

    def __iter__(self):
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def grpo_trainer_class():
    from trl import GRPOTrainer

    from pai_distil_jobs.train.trainer import JobTrainerMixin

    class JobGRPOTrainer(JobTrainerMixin, GRPOTrainer):
        """TRL's GRPOTrainer with the job contract; logs today's metric names (see RENAMED, KEPT). `reference`:
        the KL reference (`sharded_load.load_policy_and_reference`), used instead of the one TRL would build."""

        def __init__(self, *args, reference=None, **kw):
            with _reference_given(reference):
                super().__init__(*args, **kw)

        def _get_train_sampler(self, dataset=None):
            return EpochSeededSampler(super()._get_train_sampler(dataset))

        completions_path = None  # where `sample_completions` go each logged step (the job's output)
        _completions_written = False

        def log(self, logs: dict, start_time: float | None = None) -> None:
            ours = defaultdict(list)
            for k, v in self._metrics["train"].items():
                if k in RENAMED or k in KEPT:
                    ours[RENAMED.get(k, k)] = v
            self._metrics["train"] = ours
            super().log(logs, start_time)
            if self.completions_path and "loss" in logs and self.accelerator.is_main_process:
                records = sample_completions(self._logs, self.state.global_step, self.reward_func_names,
                                             self.reward_weights.tolist())
                append_completions(self.completions_path, records, resumed=not self._completions_written)
                self._completions_written = True

    return JobGRPOTrainer


@contextmanager
def _reference_given(reference):
    """TRL's GRPOTrainer builds its KL reference itself: `from_pretrained` of the policy's path in the policy's
    dtype. That is a whole fp32 copy on each GPU under DDP (the policy trains in fp32 there), and under FSDP's
    `cpu_ram_efficient_loading` a model with no weights on every rank but each node's first (accelerate
    broadcasts only into the trained model). While `reference` is given, TRL's builder returns it instead;
    TRL then prepares it as before (ZeRO-3 partitions it, FSDP wraps its root, else it goes to the device)."""
    if reference is None:
        yield
        return
    import trl.trainer.grpo_trainer as trl_grpo

    build = trl_grpo.create_model_from_path
    trl_grpo.create_model_from_path = lambda *_, **__: reference
    try:
        yield
    finally:
        trl_grpo.create_model_from_path = build


def grpo_arguments(cfg: GRPOConfig, settings, checkpoint_dir, n_problems: int, reward_weights: list[float],
                   prompt_tokens: int = PROMPT_TOKENS):
    """TRL's GRPOConfig for our config: one generation per optimizer step, `group_size` completions
    per problem, `settings.batch_size` completions per step split into micro-batches over the processes.
    Colocated vLLM takes `cfg.vllm_gpu_memory` of each GPU, and its context is the longest prompt
    (`prompt_tokens`) plus a completion: left to vLLM, the model's own (40,960 tokens for Qwen3) would
    reserve KV cache for rows that never occur."""
    from trl import GRPOConfig as TRLGRPOConfig

    from pai_distil_jobs.train.trainer import training_arguments

    chat = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
    extra = {}
    if cfg.rollout == "vllm":
        extra = {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory,
                 "vllm_tensor_parallel_size": cfg.vllm_tensor_parallel_size,
                 "vllm_max_model_length": prompt_tokens + cfg.max_completion_length}
    level = {"importance_sampling_level": "sequence"} if cfg.loss_type in ("luspo", "vespo") else {}
    return training_arguments(
        settings, checkpoint_dir, n_problems * cfg.group_size, cls=TRLGRPOConfig,
        num_generations=cfg.group_size, steps_per_generation=settings.gradient_accumulation_steps, num_iterations=1,
        beta=cfg.kl_coef, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        top_p=cfg.top_p, scale_rewards=cfg.scale_rewards, loss_type=cfg.loss_type, reward_weights=reward_weights,
        chat_template_kwargs=chat, use_vllm=cfg.rollout == "vllm", shuffle_dataset=True, log_completions=False,
        **extra, **level)
