"""White-box and on-policy distillation on TRL's SFTTrainer: one loss, two sources of teacher top-k.

`distill: {mode: logits}` reads the teacher's stored top-k (the teacher-logits stage);
`distill: {mode: on-policy}` is GKD: a `lmbda` share of steps the student samples its own
completions and the teacher (a checkpoint in the job, or an endpoint) scores every token of them;
the other steps the teacher scores the rows. Either way the loss is

    alpha * CE(rows' tokens) + (1 - alpha) * T^2 * D(teacher || student) per trained token,

with D forward KL, reverse KL or generalised JSD, over the teacher's top-k plus one bucket for the
rest of the vocabulary (both distributions coarsened the same way, so every D is a proper
divergence and a lower bound of the full-vocabulary one). On-policy steps use D alone: the
student's own text is no target.

Why not TRL's GKDTrainer or DistillationTrainer (trl 1.16): both need the teacher's full logits
from a model in the same process, and neither reads stored top-k or a served teacher. Why on
SFTTrainer: the rows, masks, checkpoints, schedule and resume are the SFT stages' own, so a KD run
keeps every guarantee of `fit`.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from pai_distil.core.contract import JobError
from pai_distil_jobs.train.sft_data import IGNORE
from pai_distil_jobs.train.trainer import JobTrainerMixin

TAIL_FLOOR = 1e-6  # the rest-of-vocabulary bucket never drops below this mass (log 0 has no gradient)


# -- the loss ------------------------------------------------------------------------------------------


def coarsen(student_logits: torch.Tensor, ids: torch.Tensor, teacher_lps: torch.Tensor, temperature: float,
            log_norm: torch.Tensor | None = None):
    """(student, teacher) log-probabilities over k + 1 buckets: the teacher's top-k tokens and the rest.

    student_logits [n, V]; ids, teacher_lps [n, k] (teacher log-probs at temperature 1; -inf marks an
    empty slot). The student's buckets are exact at `temperature`; the teacher's rest bucket is its
    remaining mass, tempered as one token. `log_norm` [n, 1], the logsumexp of the tempered logits when
    the caller has it already (a pass over the vocabulary fewer).
    """
    valid = torch.isfinite(teacher_lps)
    z = student_logits.float()
    z = z if temperature == 1 else z / temperature
    if log_norm is None:
        log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    # gathered, then normalised: the same numbers as log_softmax(z)[ids], without its [n, V] result
    s = torch.where(valid, z.gather(1, ids.clamp(min=0)) - log_norm, float("-inf"))
    t = teacher_lps.float()
    s_rest = torch.log1p(-torch.logsumexp(s, -1).exp().clamp(max=1 - TAIL_FLOOR))
    t_rest = torch.log1p(-torch.logsumexp(t, -1).exp().clamp(max=1 - TAIL_FLOOR))
    s_b = torch.cat([s, s_rest[:, None]], dim=1)
    t_b = torch.log_softmax(torch.cat([t, t_rest[:, None]], dim=1) / temperature, dim=1)
    return s_b, t_b


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of log-probabilities; empty buckets (p = -inf) add nothing."""
    return torch.where(torch.isfinite(p), p.exp() * (p - q), 0.0).sum(-1)


def divergence(s: torch.Tensor, t: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence of student `s` from teacher `t` (log-probabilities over the same buckets):
    forward KL(t || s), reverse KL(s || t), or jsd: beta KL(t || m) + (1 - beta) KL(s || m) with
    m = beta t + (1 - beta) s (TRL's generalised JSD)."""
    if kind == "forward":
        return _kl(t, torch.where(torch.isfinite(t), s, 0.0))
    if kind == "reverse":
        return _kl(s, torch.where(torch.isfinite(s), t, 0.0))
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    m = torch.where(torch.isfinite(m), m, 0.0)
    return beta * _kl(t, m) + (1 - beta) * _kl(s, m)


def _kd_terms(z, labels, ids, lps, temperature: float, kind: str, beta: float) -> torch.Tensor:
    """[n, 2]: each position's CE at temperature 1 and its T^2-scaled divergence, from fp32 logits z [n, V]."""
    log_norm = torch.logsumexp(z, -1, keepdim=True)
    ce = (log_norm - z.gather(1, labels[:, None])).squeeze(1)
    s, t = coarsen(z, ids, lps, temperature, log_norm if temperature == 1 else None)
    return torch.stack([ce, (temperature ** 2) * divergence(s, t, kind, beta)], 1)


def kd_losses(hidden, weight, bias, labels, ids, lps, temperature: float = 1.0, kind: str = "forward",
              beta: float = 0.5):
    """(CE sum, divergence sum, tokens) over positions with labels != IGNORE.

    hidden [B, T, H], the decoder's last hidden states (position t predicts token t + 1); weight [V, H] and
    bias, the LM head; labels [B, T]; ids, lps [B, T, k] hold the teacher's top-k for the token at t. Only
    the trained positions reach the head, a chunk at a time (`lm_head_chunks.chunked_head`): no
    [tokens, vocab] tensor outlives its chunk, in the forward or the backward pass.
    """
    from functools import partial

    from pai_distil_jobs.train.lm_head_chunks import chunked_head, next_token_positions

    b, t = next_token_positions(labels != IGNORE)
    terms = chunked_head(hidden[b, t], weight, bias, partial(_kd_terms, temperature=temperature, kind=kind, beta=beta),
                         labels[b, t + 1], ids[b, t + 1], lps[b, t + 1])
    return terms[:, 0].sum(), terms[:, 1].sum(), len(b)


def kd_loss(model, batch: dict, distill, on_policy: bool = False):
    """(loss, CE sum, divergence sum, tokens) of one KD batch: `alpha` CE + (1 - alpha) divergence per trained
    token, the divergence alone on on-policy steps.

    model: the student as the trainer holds it (plain, PEFT, DDP, a DeepSpeed engine or FSDP), run through
    its own forward; batch: `KDCollator`'s (input_ids, attention_mask, labels, topk_ids, topk_lps);
    distill: `specs.Distill`.
    """
    from pai_distil_jobs.train.lm_head_chunks import final_hidden, head_params, run_inside, unwrap

    def student_sums(input_ids=None, attention_mask=None, **_):
        lm = unwrap(model)
        hidden = final_hidden(lm, {"input_ids": input_ids, "attention_mask": attention_mask})
        return kd_losses(hidden, *head_params(lm), batch["labels"], batch["topk_ids"], batch["topk_lps"],
                         distill.temperature, distill.divergence_name, distill.beta)

    ce, kd, n = run_inside(model, student_sums, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    alpha = 0.0 if on_policy else distill.alpha
    return (alpha * ce + (1 - alpha) * kd) / max(n, 1), ce, kd, n


# -- data ----------------------------------------------------------------------------------------------


class KDCollator:
    """Right-pads a batch; with a store, adds the rows' stored top-k at their trained positions."""

    def __init__(self, pad_id: int, store=None, k: int | None = None):
        self.pad_id, self.store, self.k = pad_id, store, k

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from pai_distil_jobs.train.sft_data import collate

        batch = collate(examples, self.pad_id)
        if self.store is None:
            return batch
        B, T = batch["input_ids"].shape
        ids = torch.zeros((B, T, self.k), dtype=torch.long)
        lps = torch.full((B, T, self.k), float("-inf"), dtype=torch.float32)
        for i, e in enumerate(examples):
            targets, tid, tlp = self.store.get(e["kd_key"])
            pos = [p for p, t in enumerate(e["labels"]) if t != IGNORE]
            got = np.asarray([e["labels"][p] for p in pos])
            n = min(len(pos), len(targets))
            if len(pos) > len(targets) or not np.array_equal(got[:n], targets[:n]):
                raise JobError("a row's tokens differ from the ones its teacher logits were scored on; run "
                               "teacher-logits with this stage's student and train.max_length (or larger)")
            ids[i, pos] = torch.from_numpy(tid[:n])
            lps[i, pos] = torch.from_numpy(tlp[:n])
        batch["topk_ids"], batch["topk_lps"] = ids, lps
        return batch


def check_stored(dataset, store) -> None:
    """Every training row (`token_cache.encoded_rows(keyed=True)`: its `kd_key` names its stored top-k)
    has the teacher's top-k in `store`."""
    keys = dataset["kd_key"]
    missing = [k for k in keys if k not in store]
    if missing:
        raise JobError(f"{len(missing)} of {len(keys)} training rows have no teacher logits in input "
                       "'teacher_logits'; score this stage's `cots` input with the teacher-logits stage")


# -- the trainer ---------------------------------------------------------------------------------------


def kd_trainer_class():
    from trl import SFTTrainer

    class JobKDTrainer(JobTrainerMixin, SFTTrainer):
        """SFTTrainer with the distillation loss; `teacher` scores batches that carry no stored top-k,
        and on-policy steps replace the batch by the student's own samples first."""

        distill = None  # specs.Distill
        teacher = None  # teacher_topk.LocalTeacher | EndpointTeacher | None
        stops: list[int] = []
        vllm = None  # TRL's VLLMGeneration with distill.rollout vllm
        _vllm_step = -1  # the step whose weights vLLM holds

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.distill.mode == "on-policy" and self._on_policy_step():
                inputs = self._student_samples(model, inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def _on_policy_step(self) -> bool:
            """The GKD draw, fixed by seed and step: a resumed run draws as the first one did."""
            draw = random.Random(self.args.seed * 1_000_003 + self.state.global_step).random()
            return draw < self.distill.lmbda

        @torch.no_grad()
        def _student_samples(self, model, inputs: dict) -> dict:
            """The batch's prompts completed by the student (sampled), labelled on the completions."""
            from trl.models.utils import unwrap_model_for_generation

            ids, labels = inputs["input_ids"], inputs["labels"]
            starts = [int((labels[i] != IGNORE).nonzero()[0]) for i in range(len(ids))]
            width = max(starts)
            pad = self.processing_class.pad_token_id
            prompt = torch.full((len(ids), width), pad, dtype=ids.dtype, device=ids.device)
            mask = torch.zeros_like(prompt)
            for i, s in enumerate(starts):  # left-padded, as generation wants
                prompt[i, width - s:], mask[i, width - s:] = ids[i, :s], 1
            if self.vllm is not None:
                if self._vllm_step != self.state.global_step:
                    self.vllm.sync_weights()
                    self._vllm_step = self.state.global_step
                _, completions, _, _ = self.vllm.generate(prompts=[ids[i, :s].tolist() for i, s in enumerate(starts)],
                                                          images=None, num_generations=1)
                completions = [list(c) for c in completions]  # max_tokens >= 1: never empty
            else:
                with unwrap_model_for_generation(model, self.accelerator) as m:
                    out = m.generate(input_ids=prompt, attention_mask=mask, do_sample=True,
                                     temperature=self.distill.sample_temperature, top_k=None, top_p=1.0,
                                     max_new_tokens=self.distill.max_new_tokens, eos_token_id=self.stops,
                                     pad_token_id=pad)
                completions = out[:, width:].tolist()
            rows = []
            for i, (s, c) in enumerate(zip(starts, completions)):
                end = next((j for j, t in enumerate(c) if t in self.stops), len(c) - 1)
                c = c[:end + 1]
                rows.append({"input_ids": ids[i, :s].tolist() + c, "labels": [IGNORE] * s + c})
            from pai_distil_jobs.train.sft_data import collate

            batch = {k: v.to(ids.device) for k, v in collate(rows, pad).items()}
            batch["on_policy"] = True
            n = sum(len(r["labels"]) - s for r, s in zip(rows, starts))
            self._metrics["train"]["sample_tokens"].append(n / len(rows))
            return batch

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_policy = bool(inputs.pop("on_policy", False))
            if "topk_ids" not in inputs:
                inputs["topk_ids"], inputs["topk_lps"] = self.teacher.topk(
                    inputs["input_ids"], inputs["attention_mask"], inputs["labels"], self.distill.top_k)
            loss, ce, kd, n = kd_loss(model, inputs, self.distill, on_policy)
            n = max(n, 1)
            metrics = self._metrics["train"]
            # tokens seen, counted as SFTTrainer counts them, so KD runs log tokens/s (and TensorBoard num_tokens)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
            metrics["num_tokens"] = [self._total_train_tokens]
            metrics["ce"].append(float(ce.detach()) / n)
            metrics["kd"].append(float(kd.detach()) / n)
            metrics["on_policy"].append(float(on_policy))
            return (loss, None) if return_outputs else loss

    return JobKDTrainer


def kd_trainer(ctx, distill, model, tokenizer, student_name: str, dataset, args, peft, callbacks, say):
    """The KD trainer for `distill` (specs.Distill): stored top-k from input `teacher_logits`, or the
    teacher (checked to share the tokenizer) in bf16 under bf16 training, sharded as the student is
    (`sharded_load.shard_frozen`)."""
    from pai_distil.core.config import LogitsTeacher

    from pai_distil_jobs.models.models import end_tokens
    from pai_distil_jobs.train.teacher_topk import LocalTeacher, TopKStore, open_teacher, resolve_teacher, tokenizer_digest
    from pai_distil_jobs.train.topk_local import local_topk

    store = teacher = None
    if distill.mode == "logits":
        store = TopKStore(local_topk(ctx.input("teacher_logits"), say))
        if store.meta.get("tokenizer") not in (None, tokenizer_digest(tokenizer)):
            raise JobError(f"input 'teacher_logits' was scored for another tokenizer than student {student_name!r}'s; "
                           "score the rows with teacher-logits for this student (student.model)")
        say(f"distill: white-box KD on the teacher's top-{store.top_k} ({store.meta.get('teacher')}), "
            f"{distill.divergence_name} divergence, alpha {distill.alpha:g}, temperature {distill.temperature:g}")
    else:
        from functools import partial

        from pai_distil_jobs.train.sharded_load import load_frozen

        distill = distill.model_copy(update={"teacher": resolve_teacher(distill.teacher or LogitsTeacher(), ctx)})
        teacher = open_teacher(distill.teacher, tokenizer, student_name, load=partial(load_frozen, args=args))
        say(f"distill: on-policy (GKD) from teacher {distill.teacher.model or distill.teacher.endpoint.base_url}, "
            f"{distill.divergence_name} divergence over its top-{distill.top_k}, lmbda {distill.lmbda:g}, "
            f"{distill.max_new_tokens} new tokens per sample")
    if store is not None:
        check_stored(dataset, store)
    collator = KDCollator(tokenizer.pad_token_id, store, store.top_k if store else None)
    trainer = kd_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 data_collator=collator, peft_config=peft, callbacks=callbacks)
    trainer.model_accepts_loss_kwargs = False  # our loss is a per-batch mean; the Trainer divides by accumulation
    if isinstance(teacher, LocalTeacher):  # sharded like the student (ZeRO-3 / FSDP), else on this rank's GPU
        from pai_distil_jobs.train.sharded_load import shard_frozen

        teacher.model = shard_frozen(teacher.model, args, trainer.accelerator)
    trainer.distill, trainer.teacher = distill, teacher
    trainer.stops = end_tokens(tokenizer, model)
    if distill.rollout == "vllm":
        trainer.vllm = vllm_rollouts(trainer, distill, args.max_length)
    return trainer


def check_vllm_rollout(distill, student_name: str) -> None:
    """Before the student loads: `distill.rollout: vllm` needs vLLM in the image and a checkpoint to start it from."""
    from pai_distil.core.presets import is_preset

    from pai_distil_jobs.models.generation import require_vllm

    require_vllm("distill.rollout vllm", "distill.rollout hf")
    if is_preset(student_name):
        raise JobError(f"distill.rollout vllm starts vLLM from the student's checkpoint, and {student_name} has none; "
                       "use a checkpoint (student.model or the stage's student input), or distill.rollout hf")


def vllm_rollouts(trainer, distill, max_length: int):
    """TRL's colocated vLLM engine for the on-policy samples (GRPO's `rollout: vllm` uses the same one):
    it loads the student's checkpoint, then gets the trained weights before each step's samples."""
    from trl.generation.vllm_generation import VLLMGeneration

    return VLLMGeneration(
        model=trainer.model, accelerator=trainer.accelerator, processing_class=trainer.processing_class,
        mode="colocate", gpu_memory_utilization=distill.vllm_gpu_memory,
        max_model_length=max_length + distill.max_new_tokens, max_num_seqs=trainer.args.per_device_train_batch_size,
        temperature=distill.sample_temperature, top_p=1.0, top_k=0, max_completion_length=distill.max_new_tokens,
        logprobs=None, generation_kwargs={"stop_token_ids": trainer.stops})
