"""Per-token log-probabilities of distillation: the teacher's top-k (`teacher_topk.topk_at`, a served
teacher's echoed logprobs), the student's buckets over them (`distill.coarsen`), the divergences and
the CE / KD sums of `distill.kd_losses`, each against a hand computation with torch.log_softmax on
tiny logits."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pai_distil_jobs.train.distill import TAIL_FLOOR, coarsen, divergence, kd_losses  # noqa: E402
from pai_distil_jobs.train.sft_data import IGNORE  # noqa: E402
from pai_distil_jobs.train.lm_head_chunks import chunk_positions  # noqa: E402
from pai_distil_jobs.train.teacher_topk import EndpointTeacher, topk_at  # noqa: E402

INF = float("inf")
EYE = torch.eye(4)  # an LM head that gives the hidden states as they are
# hidden states = logits (the head below is the identity): one row, four positions, vocabulary 4
LOGITS = torch.tensor([[[2.0, 1.0, 0.0, -1.0],
                        [0.0, 3.0, 1.0, 0.5],
                        [1.0, 1.0, 1.0, 1.0],
                        [-2.0, 0.0, 4.0, 0.5]]])


class IdentityLM(torch.nn.Module):
    """get_decoder() returns the inputs' preset hidden states; get_output_embeddings() is the identity."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden
        vocab = SimpleNamespace(vocab_size=hidden.shape[-1])
        self.config = SimpleNamespace(get_text_config=lambda: vocab)  # topk_at sizes its chunks from the config
        self.head = torch.nn.Linear(hidden.shape[-1], hidden.shape[-1], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(hidden.shape[-1]))

    def get_decoder(self):
        return lambda input_ids, attention_mask, use_cache: SimpleNamespace(last_hidden_state=self.hidden)

    def get_output_embeddings(self):
        return self.head


def test_topk_at_is_the_log_softmax_of_the_previous_position():
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1]])  # positions 2 and 3 are trained: logits at 1 and 2
    ids, lps = topk_at(IdentityLM(LOGITS), torch.zeros((1, 4), dtype=torch.long), torch.ones((1, 4)), labels, k=2)
    hand = torch.log_softmax(LOGITS[0], dim=-1)
    assert ids.shape == lps.shape == (1, 4, 2)
    assert ids[0, 2].tolist() == [1, 2]  # logits [0, 3, 1, 0.5]
    assert torch.allclose(lps[0, 2], hand[1, [1, 2]])
    # logits [1, 1, 1, 1]: every token log(1/4)
    assert torch.allclose(lps[0, 3], torch.full((2,), math.log(0.25)))
    z = math.log(math.exp(0) + math.exp(3) + math.exp(1) + math.exp(0.5))
    assert torch.allclose(lps[0, 2], torch.tensor([3 - z, 1 - z]))
    assert torch.isneginf(lps[0, :2]).all() and (ids[0, :2] == 0).all()  # untrained positions


def test_chunk_positions():
    assert chunk_positions(151936) == 220  # Qwen's vocabulary: 128 MiB of fp32 logits per chunk
    assert chunk_positions(4) == 2**23
    assert chunk_positions(2**30) == 16


def test_coarsen_buckets_the_student_over_the_teachers_top_k():
    student = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ids = torch.tensor([[0, 2]])
    teacher = torch.log(torch.tensor([[0.5, 0.25]]))
    s, t = coarsen(student, ids, teacher, temperature=1.0)
    p = torch.softmax(student[0], -1)
    assert torch.allclose(s[0], torch.log(torch.stack([p[0], p[2], 1 - p[0] - p[2]])))
    assert torch.allclose(t[0], torch.log(torch.tensor([0.5, 0.25, 0.25])))

    s2, t2 = coarsen(student, ids, teacher, temperature=2.0)  # both tempered: the student exactly, the teacher per bucket
    p2 = torch.softmax(student[0] / 2, -1)
    assert torch.allclose(s2[0], torch.log(torch.stack([p2[0], p2[2], 1 - p2[0] - p2[2]])))
    assert torch.allclose(t2[0], torch.log_softmax(torch.log(torch.tensor([0.5, 0.25, 0.25])) / 2, -1))


def test_coarsen_empty_slots_and_a_full_top_k():
    student = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    s, t = coarsen(student, torch.tensor([[1, -1]]), torch.tensor([[math.log(0.75), -INF]]), 1.0)
    assert torch.allclose(s[0, [0, 2]], torch.log(torch.tensor([0.25, 0.75])))
    assert torch.isneginf(s[0, 1]) and torch.isneginf(t[0, 1])
    assert torch.allclose(t[0, [0, 2]], torch.log(torch.tensor([0.75, 0.25])))
    # the teacher's top-k holds all its mass: the rest bucket keeps TAIL_FLOOR
    _, t_full = coarsen(student, torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.5]])), 1.0)
    assert t_full[0, 2].exp().item() == pytest.approx(TAIL_FLOOR, rel=0.05)  # fp32 rounding of 1 - 1e-6


def test_divergences_by_hand():
    t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    s = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    forward = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert divergence(s, t, "forward").item() == pytest.approx(forward)
    assert divergence(s, t, "reverse").item() == pytest.approx(0.25 * math.log(0.5) + 0.5 * math.log(2))
    m = [0.375, 0.25, 0.375]
    jsd = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375)) + \
        0.5 * (0.25 * math.log(0.25 / 0.375) + 0.5 * math.log(0.5 / 0.375))
    assert divergence(s, t, "jsd", beta=0.5).item() == pytest.approx(jsd)
    assert divergence(t, t, "forward").item() == pytest.approx(0.0, abs=1e-7)
    # an empty teacher bucket (-inf) adds nothing to the forward KL
    t_empty = torch.tensor([[math.log(0.5), -INF, math.log(0.5)]])
    assert divergence(s, t_empty, "forward").item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(1.0))


def test_kd_losses_sum_the_trained_tokens():
    logits = LOGITS.clone()
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2]])  # tokens 1 and 3 trained: predicted at positions 0 and 2
    k = 4
    hand = torch.log_softmax(logits[0], -1)
    # a teacher equal to the student over the whole vocabulary: every divergence is 0
    ids = torch.arange(4).expand(1, 4, k).clone()
    lps = torch.full((1, 4, k), -INF)
    lps[0, 1], lps[0, 3] = hand[0], hand[2]
    with torch.no_grad():
        ce, kd, n = kd_losses(logits, EYE, None, labels, ids, lps, temperature=1.0)
    assert n == 2
    assert ce.item() == pytest.approx(-(hand[0, 1] + hand[2, 2]).item())
    assert kd.item() == pytest.approx(0.0, abs=1e-5)

    # a one-token teacher: forward KL = sum over buckets t log(t / s), scaled by T^2
    ids1 = torch.zeros((1, 4, 1), dtype=torch.long)
    lps1 = torch.full((1, 4, 1), -INF)
    lps1[0, 1, 0], lps1[0, 3, 0] = math.log(0.5), math.log(0.5)
    with torch.no_grad():
        _, kd1, _ = kd_losses(logits, EYE, None, labels, ids1, lps1, temperature=1.0)
    p = torch.softmax(logits[0], -1)
    want = sum(0.5 * math.log(0.5 / p[pos, 0].item()) + 0.5 * math.log(0.5 / (1 - p[pos, 0].item())) for pos in (0, 2))
    assert kd1.item() == pytest.approx(want, rel=1e-5)
    with torch.no_grad():
        ce2, kd2, _ = kd_losses(logits, EYE, None, labels, ids1, lps1, temperature=2.0)
    p2 = torch.softmax(logits[0] / 2, -1)
    t2 = torch.softmax(torch.log(torch.tensor([0.5, 0.5])) / 2, -1)  # equal buckets stay equal
    want2 = 4 * sum(t2[0].item() * math.log(t2[0].item() / p2[pos, 0].item())
                    + t2[1].item() * math.log(t2[1].item() / (1 - p2[pos, 0].item())) for pos in (0, 2))
    assert kd2.item() == pytest.approx(want2, rel=1e-5)
    assert ce2.item() == pytest.approx(ce.item())  # CE is at temperature 1 whatever the KD temperature


def test_kd_losses_gradient_flows_through_the_checkpointed_chunks():
    logits = LOGITS.clone().requires_grad_(True)
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2]])
    ids = torch.zeros((1, 4, 1), dtype=torch.long)
    lps = torch.full((1, 4, 1), math.log(0.5))
    ce, kd, n = kd_losses(logits, EYE, None, labels, ids, lps)
    ce.backward()
    grad = logits.grad[0]
    p = torch.softmax(LOGITS[0], -1)
    assert torch.allclose(grad[0], p[0] - torch.nn.functional.one_hot(torch.tensor(1), 4))  # d CE / d logits
    assert torch.allclose(grad[2], p[2] - torch.nn.functional.one_hot(torch.tensor(2), 4))
    assert (grad[[1, 3]] == 0).all()


class _Tok:
    def __len__(self):
        return 4

    def convert_tokens_to_ids(self, token):
        return {"a": 0, "b": 1, "c": 2, "d": 3}.get(token)


class _Client:
    def __init__(self, answer):
        self.answer, self.sent = answer, []
        self.completions = self

    async def create(self, **kw):
        self.sent.append(kw)
        return self.answer


def test_served_teacher_top_k_from_echoed_prompt_logprobs():
    teacher = EndpointTeacher(SimpleNamespace(base_url="http://t/v1", model="m"), _Tok())
    tops = [None, {"token_id:1": -0.1, "token_id:2": -2.5},
            {"c": -0.7, "token_id:0": -0.9, "d": -3.0}, {"a": -0.01}]
    answer = {"choices": [{"logprobs": {"tokens": ["token_id:0", "b", "token_id:2", "d", "token_id:1"],
                                        "top_logprobs": tops}}]}
    client = _Client(answer)
    example = {"input_ids": [0, 1, 2, 3], "labels": [IGNORE, 1, 2, IGNORE]}
    ids, lps = asyncio.run(teacher._one(client, example, k=2))
    assert ids.tolist() == [[1, 2], [2, 0]]  # trained positions 1 and 2, best first
    assert lps.ravel().tolist() == pytest.approx([-0.1, -2.5, -0.7, -0.9])
    sent = client.sent[0]
    assert (sent["prompt"], sent["echo"], sent["logprobs"], sent["max_tokens"]) == ([0, 1, 2, 3], True, 2, 1)
    assert sent["extra_body"] == {"return_tokens_as_token_ids": True}

    short = {"choices": [{"logprobs": {"tokens": ["a", "b", "c", "d"], "top_logprobs": [None, {"b": -0.5}, {}, None]}}]}
    ids, lps = asyncio.run(teacher._one(_Client({"choices": [{"logprobs": {
        "tokens": ["a", "b", "c", "d"], "top_logprobs": [None, {"b": -0.5}, {"c": -1.0}, None]}}]}), example, k=2))
    assert ids.tolist() == [[1, 0], [2, 0]]
    assert lps[:, 0].tolist() == pytest.approx([-0.5, -1.0]) and torch.isneginf(torch.from_numpy(lps[:, 1])).all()

    from pai_distil.core.contract import JobError

    with pytest.raises(JobError, match="position 2 has no top_logprobs"):
        asyncio.run(teacher._one(_Client(short), example, k=2))
    other = {"choices": [{"logprobs": {"tokens": ["a", "c", "c", "d"], "top_logprobs": tops}}]}
    with pytest.raises(JobError, match="echoed other tokens than the student's ids"):
        asyncio.run(teacher._one(_Client(other), example, k=2))
