"""The LM head in chunks of positions: per-token losses over Qwen's 151 936-token vocabulary at 8k-32k
tokens without ever holding a [batch, tokens, vocab] tensor.

Why: a model's plain forward returns every position's logits, 19 GB of fp32 for one 32k-token row,
and indexing them chunk by chunk does not help (each chunk's backward writes a zero tensor the size
of all of them). So the losses start from the decoder's final hidden states instead. The caller keeps
only the positions it trains ([N, H]: prompt and padding never reach the head); each chunk of them
goes through the head in the model's dtype, is upcast to fp32, becomes its loss terms and is freed;
the backward recomputes each chunk and accumulates the gradients of the hidden states and of the head
weight (in fp32) chunk by chunk. Memory and time grow linearly with N.

Two kernels over the same chunk budget (`CHUNK_ELEMENTS`):

- `token_logprobs`, log p(target) per position (the SFT loss, the reward model's likelihood, DPO's
  log-probabilities): TRL's `ChunkedLogProbFunction`, which also runs TRL's own SFT, DPO and GRPO
  trainers (Triton on GPUs, torch tiles elsewhere).
- `chunked_head`, any per-position function of the fp32 logits (KD's divergence over the teacher's
  stored top-k): ours, because TRL's chunked divergence and Liger's fused distillation kernels need
  the teacher's full hidden states and head, and Liger needs Triton (a GPU) besides.

`run_inside` calls a loss as the forward of the model it is given, so the hooks of DDP, DeepSpeed
ZeRO-3, FSDP and PEFT around the forward fire as for a plain call. These losses are the entry points
a trace of one training step calls (`pai-distil plan`), with a Hugging Face model and a batch as the
stage's collator makes it:

    distill.kd_loss(model, batch, distill, on_policy=False) -> (loss, ce_sum, kd_sum, n_tokens)
    sft_train.sft_loss(model, batch, num_items_in_batch=None, metrics=None) -> (loss, n_tokens)
    reward.pair_loss(model, batch, regression_weight=0.0, lm_weight=0.0) -> (loss, metrics)
    dpo.dpo_logps(model, batch) -> (chosen_logps, rejected_logps)
"""

from __future__ import annotations

import torch

from pai_distil.core.contract import JobError

CHUNK_ELEMENTS = 2**25  # logits held at once: 128 MiB of fp32 whatever the vocabulary (220 positions of Qwen's)
TOKEN_TILE = 4096  # positions per tile of TRL's ChunkedLogProbFunction (its TOKEN_CHUNK_SIZE)


def chunk_positions(vocab: int) -> int:
    """Positions per chunk: 220 with Qwen's 151 936-token vocabulary, all of a row with a small one."""
    return max(16, CHUNK_ELEMENTS // vocab)


def vocab_tile(vocab: int, positions: int) -> int:
    """Vocabulary columns per tile of `token_logprobs`: a tile holds CHUNK_ELEMENTS logits however many
    positions there are (tiles of one size: time per token does not change with the batch's length)."""
    return min(vocab, max(1024, CHUNK_ELEMENTS // max(1, min(positions, TOKEN_TILE))))


# -- the model -----------------------------------------------------------------------------------------


def unwrap(model):
    """The model inside DDP, a DeepSpeed engine, torch.compile or PEFT: the module whose forward runs (a
    causal LM, or the reward model)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def run_inside(model, fn, **inputs):
    """`fn(**inputs)` run as the forward of `model`'s causal LM, called through `model` itself: calling the
    decoder directly would bypass the hooks that DDP (gradient sync), ZeRO-3 and FSDP (gathering the
    parameters) put around the forward. PEFT's wrapper adds keyword arguments, which `fn` must accept."""
    from trl.models.utils import _ForwardRedirection

    return _ForwardRedirection()(model, unwrap(model), fn, **inputs)


def final_hidden(lm, inputs: dict) -> torch.Tensor:
    """The decoder's last hidden states [B, T, H] for the model inputs (ids, mask or packed position ids);
    None values (PEFT's wrapper passes `labels=None` and the like) are left out."""
    given = {k: v for k, v in inputs.items() if v is not None}
    return lm.get_decoder()(**given, use_cache=False).last_hidden_state


def head_params(lm) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the LM head, whole under FSDP2 (its shards are DTensors)."""
    from torch.distributed.tensor import DTensor

    cfg = lm.config.get_text_config()
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1.0):
        raise JobError(f"{cfg.model_type} scales or caps its logits, which the chunked LM head does not; "
                       "use a model of the Qwen or Llama families")
    head = lm.get_output_embeddings()
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    return weight, bias


def next_token_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of the hidden states that predict the tokens where mask [B, T] is set: position t
    predicts token t + 1."""
    return mask[:, 1:].bool().nonzero(as_tuple=True)


# -- log p(target) -------------------------------------------------------------------------------------


def token_logprobs(hidden, weight, bias, targets, stats: bool = False):
    """log p(target) [N] in fp32 of each row of hidden [N, H] under the head; with `stats`, also its entropy
    and whether the target is the most likely token (both without gradient), else None for them."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    outputs = ("log_probs", "entropy", "is_top1") if stats else ("log_probs",)
    with maybe_gather_lm_head_ctx(weight, bias):
        logp, entropy, _, _, top1 = ChunkedLogProbFunction.apply(
            hidden, weight, bias, targets, 1.0, vocab_tile(weight.shape[0], len(hidden)), None, 1.0, outputs)
    return logp, (entropy.detach() if stats else None), top1


def sequence_logprobs(hidden, weight, bias, input_ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) [B] in fp32, tokens [B]) over each row's tokens where mask [B, T] is set."""
    rows, pos = next_token_positions(mask)
    logp = token_logprobs(hidden[rows, pos], weight, bias, input_ids[rows, pos + 1])[0]
    total = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device).index_add(0, rows, logp)
    return total, mask[:, 1:].sum(1)


# -- any per-position function of the logits -----------------------------------------------------------


def chunked_head(hidden, weight, bias, fn, *targets) -> torch.Tensor:
    """fn(logits [n, V] fp32, *targets' rows) -> [n, m], over hidden [N, H] in chunks of positions: [N, m].

    `fn` must be a differentiable function of the logits row by row (each row's terms depend on that
    row's logits only). Its gradient is taken in the backward pass, from a recomputed chunk.
    """
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    with maybe_gather_lm_head_ctx(weight, bias):
        return _ChunkedHead.apply(hidden, weight, bias, fn, chunk_positions(weight.shape[0]), *targets)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


class _ChunkedHead(torch.autograd.Function):
    """Liger's fused-linear scheme for any loss of the logits: the forward keeps nothing but its inputs;
    the backward recomputes a chunk's logits, takes d loss / d logits [n, V] by autograd, then the two
    matmuls of the head's gradient (the weight's accumulated in fp32)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, fn, step, *targets):
        dtype = _compute_dtype(hidden)
        w, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
        out = []
        for s in range(0, max(len(hidden), 1), step):
            logits = torch.nn.functional.linear(hidden[s:s + step].to(dtype), w, b).float()
            out.append(fn(logits, *(t[s:s + step] for t in targets)).float())
            del logits
        ctx.save_for_backward(hidden, weight, bias, *targets)
        ctx.fn, ctx.step, ctx.dtype = fn, step, dtype
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad_out):
        from trl.kernels.chunked_logprob import _addmm_fp32
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        hidden, weight, bias, *targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, step = ctx.dtype, ctx.step
        with maybe_gather_lm_head_ctx(weight, bias):
            w, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            for s in range(0, len(hidden), step):
                h = hidden[s:s + step].to(dtype)
                with torch.enable_grad():
                    z = torch.nn.functional.linear(h, w, b).float().requires_grad_()
                    terms = ctx.fn(z, *(t[s:s + step] for t in targets)).float()
                    (dz,) = torch.autograd.grad(terms, z, grad_out[s:s + step])
                del z, terms
                if need_h:
                    grad_h[s:s + step] = dz.to(dtype) @ w
                if need_w:
                    _addmm_fp32(grad_w, dz.t().to(dtype), h)
                if need_b:
                    grad_b += dz.sum(0)
                del dz
        return (grad_h, grad_w.to(weight.dtype) if need_w else None, grad_b.to(bias.dtype) if need_b else None,
                None, None, *(None for _ in targets))
