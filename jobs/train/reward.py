"""The scalar reward model: a causal LM with a one-output head, its Bradley-Terry training on the
shared trainer, and scoring in-process (GRPO, the reward server).

score(prompt, response) = head(last hidden state) + likelihood_weight * L(response | prompt)

L is the model's own log-likelihood of the response, by default per token (`likelihood="mean"`):
a sum over tokens pays for saying less, and a policy trained against it learns to answer with
nothing. The mean is neutral to length and still marks a wrong step. A small model cannot learn
to check arithmetic from a few thousand preference pairs through a head on the last token alone
(it learns the style of the teacher instead); through its language-model head it already knows
which steps are likely, and Bradley-Terry training sharpens that (with a language-model loss
that keeps it a model of good responses; see `pair_loss`). likelihood_weight 0 gives the
classic sequence-classifier reward model.

Why transformers' `Trainer` (through the shared `JobTrainerMixin`) rather than TRL's
`RewardTrainer`: TRL's trainer is built for `AutoModelForSequenceClassification` and refuses any
other model (`config.num_labels == 1`, scores from `outputs.logits`, right-padded
`chosen_ids`/`rejected_ids` from its own collator, a model card per checkpoint). Our score needs
the language-model head's log-likelihood of the response tokens beside the head, left padding
(the head reads the last position) and a response mask, so its loss, collator and data
preparation would all be replaced, leaving only the checks that refuse our model. What it would
give on GPUs (device placement, bf16, accumulation, gradient checkpointing, DDP) is
`Trainer`'s, and we keep that.

A checkpoint is the language model as Hugging Face saves it, `reward_head.safetensors` (the head,
with the likelihood weight and form in its metadata), and `reward_stats.json` (mean and standard
deviation of the scores on held-out candidates: scores are reported standardised with them, so a
weight in GRPO's reward means the same for every model).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from pai_distil.core.artifacts import REWARD_HEAD as HEAD
from pai_distil.core.config import LIKELIHOOD, LIKELIHOOD_WEIGHT, Likelihood
from pai_distil.core.presets import is_preset


STATS = "reward_stats.json"
LIKELIHOODS = get_args(Likelihood)


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of the generation prompt followed by the response as the model writes it there (a
    template that strips the thought or opens `<think>` in the prompt still shows the thought), and
    how many of the last ones are the response's; cut from the left when too long, so the answer at
    the end is always seen."""
    from pai_distil_jobs.models.chat_template import end_of_turn
    from pai_distil_jobs.train.sft_data import MaskError, prompt_and_completion

    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    try:
        head, tail = prompt_and_completion(tokenizer, messages)
    except MaskError:  # e.g. an empty reply under a template that strips thoughts: what was written, as written
        eot = end_of_turn(tokenizer)
        head = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        tail = response + (tokenizer.decode([eot]) if eot is not None else "")
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids = (head_ids + tail_ids)[-max_length:]
    return ids, min(len(tail_ids), len(ids) - 1)


def pad_left(seqs: list[list[int]], pad: int) -> dict:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def batch_of(encoded: list[tuple[list[int], int]], pad: int) -> dict:
    """Left-padded ids and attention mask, and `response_mask`: the response tokens of each row."""
    batch = pad_left([ids for ids, _ in encoded], pad)
    resp = torch.zeros_like(batch["attention_mask"])
    for i, (_, n) in enumerate(encoded):
        if n > 0:
            resp[i, -n:] = 1
    batch["response_mask"] = resp
    return batch


class RewardModel(nn.Module):
    """A causal LM and a one-output head; see the module docstring for the score."""

    def __init__(self, lm, likelihood_weight: float = LIKELIHOOD_WEIGHT, likelihood: str = LIKELIHOOD):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        self.lm = lm
        self.likelihood_weight = float(likelihood_weight)
        self.likelihood = likelihood
        self.head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # at the start the score is the likelihood alone
        nn.init.zeros_(self.head.bias)
        # FSDP's TRANSFORMER_BASED_WRAP reads the units to shard from the model it is given: the LM's layers
        self._no_split_modules = getattr(lm, "_no_split_modules", None)

    def tie_weights(self, **kwargs) -> None:
        """accelerate re-ties the embeddings after loading FSDP shards into a model built on the meta device."""
        self.lm.tie_weights(**kwargs)

    def freeze_unused_head(self, lm_weight: float) -> None:
        """Freeze the LM head when neither the score nor the loss reads it (no likelihood term, no language-model
        loss) and it is not tied to the embeddings: DDP then sees no parameter without a gradient, and the
        optimizer keeps no state for V x H weights that never change."""
        head, embeddings = self.lm.get_output_embeddings(), self.lm.get_input_embeddings()
        if not self.likelihood_weight and not lm_weight and head.weight is not embeddings.weight:
            head.requires_grad_(False)

    def forward(self, input_ids, attention_mask, response_mask) -> torch.Tensor:
        return self.score_and_likelihood(input_ids, attention_mask, response_mask)[0]

    def score_and_likelihood(self, input_ids, attention_mask, response_mask,
                             with_likelihood: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores, and the mean log-probability of each row's response tokens (zeros when the
        score has no likelihood term and `with_likelihood` does not ask for it)."""
        from pai_distil_jobs.train.lm_head_chunks import final_hidden, head_params, sequence_logprobs

        hidden = final_hidden(self.lm, {"input_ids": input_ids, "attention_mask": attention_mask})
        score = self.head(hidden[:, -1])[:, 0]
        mean = torch.zeros_like(score)
        if self.likelihood_weight or with_likelihood:  # the response tokens only go through the LM head, in chunks
            total, count = sequence_logprobs(hidden, *head_params(self.lm), input_ids, response_mask)
            mean = total / count.clamp(min=1)
            score = score + self.likelihood_weight * (mean if self.likelihood == "mean" else total)
        return score, mean

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Whatever transformers asks of a model (its arguments change between releases) goes to the LM."""
        self.lm.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """The LM as Hugging Face saves it and the head beside it. `state_dict`: this model's whole weights
        gathered from ZeRO-3 / FSDP shards (its own parameters there are empty or partial)."""
        from safetensors.torch import save_file

        path = Path(path)
        if state_dict is None:
            self.lm.save_pretrained(path)
            head = self.head.state_dict()
        else:
            self.lm.save_pretrained(path, state_dict={k[3:]: v for k, v in state_dict.items() if k.startswith("lm.")})
            head = {k[5:]: v for k, v in state_dict.items() if k.startswith("head.")}
        save_file({k: v.contiguous() for k, v in head.items()}, str(path / HEAD),
                  metadata={"likelihood_weight": str(self.likelihood_weight), "likelihood": self.likelihood})

    def load_head(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(str(path)))

    def load_weights(self, path: str | Path) -> None:
        """Load a checkpoint directory written by `save_pretrained` into this model (resume)."""
        from safetensors.torch import load_file

        path = Path(path)
        index = path / "model.safetensors.index.json"  # a large LM is saved in several files
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
        for name in files:
            self.lm.load_state_dict(load_file(str(path / name)), strict=False)
        self.load_head(path / HEAD)


def pair_batch(examples: list[dict], pad: int) -> dict:
    """One batch of preference rows (`{"chosen", "rejected"}` as `encode` returns them, and their judge
    scores): the chosen responses first, then the rejected ones, and `targets`, their judge scores."""
    batch = batch_of([e["chosen"] for e in examples] + [e["rejected"] for e in examples], pad)
    batch["targets"] = torch.tensor([e["chosen_score"] for e in examples] + [e["rejected_score"] for e in examples])
    return batch


def pair_loss(model: RewardModel, batch: dict, regression_weight: float = 0.0,
              lm_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Pairwise Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected), plus an optional squared
    error pulling each score toward its judge score, plus the language-model loss on the chosen
    responses; and the numbers to log with it (`pair_accuracy`, `chosen_nll`).

    Why the language-model loss: Bradley-Terry only asks that chosen score above rejected, and left
    alone it moves the likelihood anywhere that serves that, e.g. runs of blank lines become likely.
    A policy trained against the score then finds those. Keeping the model a model of good
    responses keeps text it would never write unlikely."""
    from pai_distil_jobs.train.lm_head_chunks import run_inside, unwrap

    r, mean_logp = run_inside(model, unwrap(model).score_and_likelihood, input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"], response_mask=batch["response_mask"],
                              with_likelihood=bool(lm_weight))
    n = r.shape[0] // 2
    margin = r[:n] - r[n:]
    loss = -F.logsigmoid(margin).mean()
    if regression_weight:
        loss = loss + regression_weight * F.mse_loss(r, batch["targets"].to(r.dtype))
    metrics = {"pair_accuracy": (margin > 0).float().mean().item()}
    if lm_weight:
        nll = -mean_logp[:n].mean()
        loss = loss + lm_weight * nll
        metrics["chosen_nll"] = nll.item()
    return loss, metrics


def _reward_trainer_class():
    from transformers import Trainer

    from pai_distil_jobs.train.trainer import JobTrainerMixin

    class JobRewardTrainer(JobTrainerMixin, Trainer):
        """transformers' Trainer with our pairwise loss; checkpoints in the reward model's own format."""

        regression_weight = lm_weight = 0.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, metrics = pair_loss(model, inputs, self.regression_weight, self.lm_weight)
            for k, v in metrics.items():
                self._pair_metrics.setdefault(k, []).append(v)
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs:  # a training record: add the window's mean of our numbers, over every rank
                names = sorted(k for k, v in self._pair_metrics.items() if v)
                local = torch.tensor([sum(self._pair_metrics[k]) / len(self._pair_metrics[k]) for k in names],
                                     device=self.args.device)
                logs.update(zip(names, self.accelerator.reduce(local, reduction="mean").tolist()))
                self._pair_metrics = {}
            super().log(logs, start_time)

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            """Rank 0 writes; `state_dict` is the whole model where ZeRO-3 / FSDP gathered it (`save_model`)."""
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
                self.processing_class.save_pretrained(output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            if self.is_fsdp_enabled:  # FSDP's own shards, written beside ours at every checkpoint
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            # DeepSpeed resumes from its engine's files and never comes here; DDP and one process do, unwrapped
            self.accelerator.unwrap_model(model or self.model).load_weights(resume_from_checkpoint)

    return JobRewardTrainer


def reward_trainer(model: RewardModel, tokenizer, examples: list[dict], settings, checkpoint_dir: Path,
                   metrics_path: Path, *, regression_weight: float = 0.0, lm_weight: float = 0.0,
                   tensorboard: Path | None = None, log=print, args=None):
    """A trainer of `model` on preference rows (see `pair_batch`) and its `JobCallback`; run it with
    `trainer.fit(trainer, callback, checkpoint_dir)`, which resumes from the newest complete checkpoint in `checkpoint_dir`.
    `args`: the arguments the model was loaded after (`training_arguments`); built here when not given."""
    from pai_distil_jobs.train.trainer import JobCallback, tensorboard_callback, training_arguments

    args = args or training_arguments(settings, checkpoint_dir, len(examples))
    model.freeze_unused_head(lm_weight)
    callback = JobCallback(metrics_path, log=log)
    callbacks = [callback] + ([tensorboard_callback(tensorboard)] if tensorboard else [])
    pad = tokenizer.pad_token_id
    trainer = _reward_trainer_class()(model=model, args=args, train_dataset=examples, processing_class=tokenizer,
                                      data_collator=lambda rows: pair_batch(rows, pad), callbacks=callbacks)
    trainer.job, trainer._pair_metrics = settings, {}
    trainer.regression_weight, trainer.lm_weight = regression_weight, lm_weight
    return trainer, callback


def save_whole(trainer, output_dir: Path) -> None:
    """The trained reward model, whole, in `output_dir`; called on every rank: ZeRO-3 and FSDP gather the
    shards (a collective), rank 0 writes. (transformers' `save_model` writes nothing under FSDP's sharded
    checkpoints, hence the gather here.)"""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    trainer._save(str(output_dir), state_dict=state)
    trainer.accelerator.wait_for_everyone()


@torch.inference_mode()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
                batch_size: int = 64) -> list[float]:
    """Raw scores of (prompt, response) pairs, in order; batches are formed by length."""
    model.eval()
    device = next(model.parameters()).device
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in batch_of([seqs[i] for i in idx], tokenizer.pad_token_id).items()}
        values = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"]).float().tolist()
        for i, v in zip(idx, values):
            out[i] = float(v)
    return out


def load_reward_model(spec: str | Path, seed: int = 0, likelihood_weight: float = LIKELIHOOD_WEIGHT,
                      likelihood: str = LIKELIHOOD, load=None):
    """A reward model (`RewardModel`) and its tokenizer: a trained one as it was saved, or a
    new head on a preset or on any causal-LM checkpoint (`likelihood_weight` and `likelihood`
    apply to new ones; checkpoints written before the per-token form existed summed). `load(spec, seed)`
    loads the language model (training: `sharded_load.load_trained`); default `models.load_model`."""
    from safetensors import safe_open

    from pai_distil_jobs.models.models import load_model

    head = Path(spec) / HEAD
    if not is_preset(str(spec)) and head.exists():
        with safe_open(str(head), framework="pt") as f:
            saved = f.metadata() or {}
        likelihood_weight = float(saved.get("likelihood_weight", likelihood_weight))
        likelihood = saved.get("likelihood", "sum")
    lm, tokenizer = (load or load_model)(spec, seed=seed)
    torch.manual_seed(seed)
    model = RewardModel(lm, likelihood_weight, likelihood)
    if head.exists():
        model.load_head(head)
    return model, tokenizer


class RewardScorer:
    """A trained reward model loaded for scoring, on the GPU when there is one; thread-safe (the server
    scores from a pool)."""

    def __init__(self, path: str | Path, max_length: int | None = None, batch_size: int = 64):
        from functools import partial

        from pai_distil_jobs.models.models import inference_device, load_model

        self.path = Path(path)
        device = inference_device()  # this process's GPU (LOCAL_RANK) when there is one, in bf16 where supported
        gpu = device.type == "cuda"
        dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
        # read straight onto that GPU in its dtype: never a whole fp32 copy in host memory per process
        load = partial(load_model, dtype=dtype, device_map={"": device} if gpu else None)
        self.model, self.tokenizer = load_reward_model(self.path, load=load)
        self.model.to(device=device, dtype=dtype).eval()
        stats_path = self.path / STATS
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        self.mean, self.std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0)) or 1.0
        self.max_length = max_length or int(stats.get("max_length", 512))
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Standardised scores: (raw - held-out mean) / held-out standard deviation."""
        with self._lock:
            raw = score_texts(self.model, self.tokenizer, prompts, responses, self.max_length, self.batch_size)
        return [(r - self.mean) / self.std for r in raw]
