"""The LM head in chunks (`lm_head_chunks`) and the training losses on it: values and gradients equal
the unchunked formulas (full logits, log_softmax); at Qwen's 151 936-token vocabulary, backward time
and traced peak memory grow linearly with the tokens, and no [tokens, vocab] tensor is ever made."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import pai_distil_jobs.train.lm_head_chunks as chunks  # noqa: E402
from pai_distil_jobs.train.distill import coarsen, divergence, kd_loss, kd_losses  # noqa: E402

QWEN_VOCAB = 151936
ATOL = RTOL = 1e-5


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 positions and tiles of 4 positions x 5 vocabulary columns, so every path loops."""
    import trl.kernels.chunked_logprob as trl_kernel

    monkeypatch.setattr(chunks, "chunk_positions", lambda vocab: 3)
    monkeypatch.setattr(chunks, "vocab_tile", lambda vocab, positions: 5)
    monkeypatch.setattr(trl_kernel, "TOKEN_CHUNK_SIZE", 4)


def head(V=37, H=8, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_() if bias else None
    return w, b


def grads(out, *leaves):
    return torch.autograd.grad(out, [x for x in leaves if x is not None])


def close(a, b):
    return torch.allclose(a.double(), b.double(), atol=ATOL, rtol=RTOL)


# -- values and gradients ------------------------------------------------------------------------------


def kd_batch(B=2, T=9, V=37, k=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = -100  # prompt
    labels[1, 7:] = -100  # padding
    ids = torch.randint(0, V, (B, T, k), generator=g)
    lps = torch.log_softmax(torch.randn(B, T, V, generator=g), -1).gather(2, ids)
    lps[:, :, -1] = -math.inf  # the teacher's empty top-k slots
    lps[0, 5, 1:] = -math.inf  # a position with a single top-k token
    return labels, ids, lps


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_kd_losses_and_gradients_equal_the_unchunked_formula(small_chunks, kind):
    w, b = head()
    labels, ids, lps = kd_batch()
    hidden = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
    ce, kd, n = kd_losses(hidden, w, b, labels, ids, lps, 2.0, kind, 0.3)

    logits = hidden @ w.T + b  # the whole [B, T, V], as before
    bb, tt = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    z = logits[bb, tt]
    want_ce = (torch.logsumexp(z, -1) - z.gather(1, labels[bb, tt + 1, None])[:, 0]).sum()
    s, t = coarsen(z, ids[bb, tt + 1], lps[bb, tt + 1], 2.0)
    want_kd = 4.0 * divergence(s, t, kind, 0.3).sum()

    assert n == len(bb) == 10
    assert close(ce, want_ce) and close(kd, want_kd)
    for got, want in zip(grads(ce + 0.7 * kd, hidden, w, b), grads(want_ce + 0.7 * want_kd, hidden, w, b)):
        assert close(got, want)


def test_token_logprobs_and_gradients_equal_log_softmax(small_chunks):
    w, b = head()
    hidden = torch.randn(11, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    targets = torch.randint(0, 37, (11,), generator=torch.Generator().manual_seed(4))
    logp, entropy, top1 = chunks.token_logprobs(hidden, w, b, targets, stats=True)
    full = torch.log_softmax(hidden @ w.T + b, -1)
    want = full.gather(1, targets[:, None])[:, 0]
    assert close(logp, want)
    assert close(entropy, -(full.exp() * full).sum(-1))
    assert torch.equal(top1, full.argmax(-1) == targets)
    weights = torch.linspace(0.5, 2.0, 11)  # any upstream gradient, not only a plain sum
    for got, expect in zip(grads((logp * weights).sum(), hidden, w, b), grads((want * weights).sum(), hidden, w, b)):
        assert close(got, expect)


def tiny_qwen(vocab=64, seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False,
                      attn_implementation="eager")
    return Qwen3ForCausalLM(cfg).float()


def test_the_reward_models_likelihood_equals_the_full_log_softmax(small_chunks):
    from pai_distil_jobs.train.reward import RewardModel, batch_of

    rm = RewardModel(tiny_qwen(), likelihood_weight=0.5)
    torch.nn.init.normal_(rm.head.weight)
    batch = batch_of([(list(range(3, 12)), 4), (list(range(20, 26)), 2), (list(range(30, 41)), 0)], pad=0)
    score, mean = rm.score_and_likelihood(batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                          with_likelihood=True)

    ids, mask = batch["input_ids"], batch["response_mask"][:, 1:].float()
    last = rm.lm.model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    token_logp = rm.lm.lm_head(last[:, :-1]).float().log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
    want_mean = (token_logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    want_score = rm.head(last[:, -1])[:, 0] + 0.5 * want_mean
    assert close(mean, want_mean) and close(score, want_score)
    assert mean[2] == 0  # a row with no response tokens
    params = [rm.lm.lm_head.weight, rm.lm.model.layers[0].mlp.up_proj.weight]
    for got, want in zip(grads(score.sum() + mean.sum(), *params), grads(want_score.sum() + want_mean.sum(), *params)):
        assert close(got, want)


def sft_batch(vocab=64):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, vocab, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_sft_loss_is_transformers_loss_with_or_without_num_items(small_chunks):
    from pai_distil_jobs.train.sft_train import sft_loss

    model, batch = tiny_qwen(), sft_batch()
    params = [model.lm_head.weight, model.model.embed_tokens.weight]
    metrics = {}
    loss, n = sft_loss(model, batch, metrics=metrics)
    want = model(**batch).loss
    assert int(n) == 9 and close(loss, want)
    for got, expect in zip(grads(loss, *params), grads(want, *params)):
        assert close(got, expect)
    logits = model(**batch).logits[:, :-1]
    trained = batch["labels"][:, 1:] != -100
    assert int(metrics["correct"]) == int((logits.argmax(-1) == batch["labels"][:, 1:])[trained].sum())

    loss, _ = sft_loss(model, batch, num_items_in_batch=torch.tensor(40))  # gradient accumulation: 40 tokens in all
    assert close(loss, model(**batch, num_items_in_batch=torch.tensor(40)).loss)


def test_sft_loss_on_a_padding_free_batch_and_through_peft(small_chunks):
    from peft import LoraConfig, get_peft_model

    from pai_distil_jobs.train.sft_train import sft_loss

    model = tiny_qwen()
    ids = torch.randint(1, 64, (1, 12), generator=torch.Generator().manual_seed(6))
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])  # two rows packed, as TRL's collator does
    labels = ids.masked_fill(position_ids == 0, -100)
    packed = {"input_ids": ids, "position_ids": position_ids, "labels": labels}
    # use_cache=False, as in training: with a cache transformers lets packed rows attend to each other
    assert close(sft_loss(model, packed)[0], model(**packed, use_cache=False).loss)

    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = sft_batch()
    loss, _ = sft_loss(lora, batch)  # runs through PeftModel's forward, with the adapter
    assert close(loss, lora(**batch).loss)
    a = next(p for name, p in lora.named_parameters() if "lora_A" in name)
    assert close(grads(loss, a)[0], grads(lora(**batch).loss, a)[0])


def test_dpo_logps_are_the_summed_completion_log_probs(small_chunks):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from pai_distil_jobs.train.dpo import dpo_logps

    model = tiny_qwen()
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
            {"prompt_ids": [13, 14], "chosen_ids": [15, 16, 17, 18], "rejected_ids": [19]}]
    batch = DataCollatorForPreference(pad_token_id=0)(rows)
    chosen, rejected = dpo_logps(model, batch)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].log_softmax(-1)
    per_token = full.gather(2, batch["input_ids"][:, 1:, None])[..., 0] * batch["completion_mask"][:, 1:]
    assert close(torch.cat([chosen, rejected]), per_token.sum(1))


def test_kd_loss_runs_the_students_decoder_and_head(small_chunks):
    model = tiny_qwen()
    labels, ids, lps = kd_batch(V=64)
    input_ids = torch.randint(1, 64, labels.shape, generator=torch.Generator().manual_seed(7))
    mask = ((labels != -100) | (torch.arange(9) < 3)).long()
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "topk_ids": ids, "topk_lps": lps}
    distill = SimpleNamespace(alpha=0.25, temperature=1.5, divergence_name="jsd", beta=0.5)
    loss, ce, kd, n = kd_loss(model, batch, distill)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits
    want_ce, want_kd, _ = kd_losses(logits, torch.eye(64), None, labels, ids, lps, 1.5, "jsd", 0.5)
    assert n == 10 and close(ce, want_ce) and close(kd, want_kd)
    assert close(loss, (0.25 * want_ce + 0.75 * want_kd) / 10)
    assert close(kd_loss(model, batch, distill, on_policy=True)[0], want_kd / 10)  # on-policy: the divergence alone


# -- at Qwen's vocabulary ------------------------------------------------------------------------------


class LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the element count of every tensor any op returns, forward and backward."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out


def _kd_step(hidden, w, T):
    g = torch.Generator().manual_seed(T)
    labels = torch.randint(0, QWEN_VOCAB, (1, T), generator=g)
    ids = torch.randint(0, QWEN_VOCAB, (1, T, 8), generator=g)
    lps = torch.log_softmax(torch.randn(1, T, 8, generator=g), -1)
    lps[..., -2:] = -math.inf
    ce, kd, _ = kd_losses(hidden, w, None, labels, ids, lps, 1.0, "forward")
    return ce + kd


def _likelihood_step(hidden, w, T):
    ids = torch.randint(0, QWEN_VOCAB, (1, T), generator=torch.Generator().manual_seed(T))
    return chunks.sequence_logprobs(hidden, w, None, ids, torch.ones_like(ids))[0].sum()


@pytest.mark.slow
@pytest.mark.parametrize("step", [_kd_step, _likelihood_step], ids=["kd", "reward-likelihood"])
def test_at_qwens_vocabulary_time_and_memory_grow_linearly(step):
    from torch.distributed._tools.mem_tracker import MemTracker

    w = (torch.randn(QWEN_VOCAB, 32) * 0.1).requires_grad_()
    seconds, peaks = {}, {}
    for T in (1024, 2048, 4096):
        hidden = torch.randn(1, T, 32).requires_grad_()
        tracker, largest = MemTracker(), LargestOutput()
        with tracker, largest:
            loss = step(hidden, w, T)
            start = time.process_time()  # CPU seconds: the machine is shared, wall time is not ours
            loss.backward()
            seconds[T] = time.process_time() - start
        peaks[T] = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        assert largest.most < T * QWEN_VOCAB  # nothing of [tokens, vocab], forward or backward
        w.grad = None
    assert seconds[4096] <= 5 * seconds[1024], seconds
    assert peaks[4096] <= 5 * peaks[1024], peaks
