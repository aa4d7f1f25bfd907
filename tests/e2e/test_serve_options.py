"""The model server honours what it accepts: `stop`, `logprobs` / `top_logprobs`, `n`, `seed`, DashScope's
top-level `enable_thinking`, `/v1/completions`; refuses the rest with a 400 naming the field; and tells
the truth about thinking switches. A tiny random Qwen3 (and a Qwen2.5-style) checkpoint with the real
Qwen3 tokenizer, a real server on loopback, the official openai client."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest
from conftest import serve_asgi
from real_models import QWEN25_TEMPLATE, tiny_checkpoint

torch = pytest.importorskip("torch")

MODEL, MESSAGES = "tiny", [{"role": "user", "content": "Start with 7. Add 5. What is the result?"}]
SAMPLED = {"temperature": 1.0, "seed": 11, "max_tokens": 16}  # a random model's greedy text is one token repeated


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from pai_distil_jobs.serve.chat import Engine

    return Engine(str(tiny_checkpoint(tmp_path_factory.mktemp("qwen3") / "ckpt")), threads=1)


@pytest.fixture(scope="module")
def url(engine):
    from pai_distil_jobs.serve.server import create_app

    with serve_asgi(create_app(engine, MODEL, None, "fp_test")) as base:
        yield base + "/v1"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def ask(url: str, **kw):
    return client(url).chat.completions.create(model=MODEL, messages=MESSAGES, **{**SAMPLED, **kw})


def test_seed_gives_the_same_answer_and_another_seed_another(url):
    first = ask(url).choices[0].message.content
    assert ask(url).choices[0].message.content == first
    assert ask(url, seed=12).choices[0].message.content != first


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_cuts_the_answer_before_the_stop_string(url, as_list):
    whole = ask(url).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 3]
    cut = ask(url, stop=[stop, "never-generated"] if as_list else stop).choices[0]
    assert cut.message.content == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    streamed = list(ask(url, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.message.content
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"


def test_logprobs_are_the_models_own(url, engine):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    reply = ask(url, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 16  # no end-of-turn token among them
    assert b"".join(bytes(e.bytes) for e in entries).decode(errors="replace") == reply.choices[0].message.content
    alphabet = bytes_to_unicode()  # byte-level BPE: a token's bytes spell its vocabulary entry
    generated = [engine.tokenizer.convert_tokens_to_ids("".join(alphabet[b] for b in e.bytes)) for e in entries]
    prompt = engine.render(MESSAGES, {})[0]
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(torch.tensor([prompt + generated])).logits[0].float(), dim=-1)
    for k, (e, token) in enumerate(zip(entries, generated)):
        assert e.logprob == pytest.approx(float(logp[len(prompt) - 1 + k, token]), abs=1e-3)
        top = logp[len(prompt) - 1 + k].topk(3)
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token
    assert ask(url).choices[0].logprobs is None  # not asked: not sent


def test_streamed_logprobs_cover_every_token(url):
    whole = ask(url, logprobs=True).choices[0].logprobs.content
    chunks = [c for c in ask(url, logprobs=True, stream=True) if c.choices and c.choices[0].logprobs]
    assert [e.token for c in chunks for e in c.choices[0].logprobs.content] == [e.token for e in whole]


def test_n_gives_n_choices(url):
    reply = ask(url, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3  # sampled: three different answers
    assert reply.usage.completion_tokens == 3 * 16
    more = ask(url, n=10, max_tokens=3)  # more than the engine's batch of 8: the second batch samples anew
    assert len({c.message.content for c in more.choices}) == 10
    greedy = ask(url, n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    streamed = list(ask(url, n=2, stream=True))
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_top_level_enable_thinking_is_the_chat_template_switch(url):
    def first_logprob(**kw):
        r = ask(url, temperature=0, max_tokens=1, logprobs=True, **kw)
        return r.usage.prompt_tokens, r.choices[0].logprobs.content[0].logprob

    on, off = first_logprob(), first_logprob(extra_body={"enable_thinking": False})
    assert off[0] > on[0] and off[1] != on[1]  # Qwen3's template pre-fills an empty thought: another prompt, answer
    assert first_logprob(extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == off
    bad = httpx.post(url + "/chat/completions", json={"model": MODEL, "messages": MESSAGES, "enable_thinking": False,
                                                      "chat_template_kwargs": {"enable_thinking": True}})
    assert bad.status_code == 400 and "disagree" in bad.json()["error"]["message"]


def test_completions_answer_through_the_official_client(url):
    c = client(url)
    reply = c.completions.create(model=MODEL, prompt=["Once upon a time", "The answer is"], n=2, logprobs=2,
                                 **SAMPLED)
    assert [ch.index for ch in reply.choices] == [0, 1, 2, 3] and all(ch.text for ch in reply.choices)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(top) >= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    one = c.completions.create(model=MODEL, prompt="Once upon a time", **SAMPLED).choices[0]
    stop = one.text[4:7]
    assert c.completions.create(model=MODEL, prompt="Once upon a time", stop=stop, **SAMPLED).choices[0].text == \
        one.text[:one.text.index(stop)]
    streamed = c.completions.create(model=MODEL, prompt="Once upon a time", stream=True, **SAMPLED)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == one.text


@pytest.mark.parametrize("path, extra, field", [
    ("/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/chat/completions", {"stream_options": {"continuous_usage_stats": True}}, "stream_options"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ("/completions", {"echo": True}, "echo"),
    ("/completions", {"suffix": "x"}, "suffix"),
    ("/completions", {"prompt": [[1, 2, 3]]}, "prompt"),
])
def test_what_the_server_would_not_do_is_a_400_naming_the_field(url, path, extra, field):
    body = {"model": MODEL, "max_tokens": 2, **({"messages": MESSAGES} if path.startswith("/chat") else
                                                {"prompt": "hello"}), **extra}
    r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert field.split(".")[0] in r.json()["error"]["message"]
    # the defaults SDKs send are not refused
    ok = httpx.post(url + "/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1,
                                                     "presence_penalty": 0, "frequency_penalty": 0.0, "user": "u"})
    assert ok.status_code == 200, ok.text


def test_streamed_reasoning_has_no_surrounding_newlines():
    from pai_distil.core.protocol import ThinkSplitter, split_reasoning

    text = "<think>\n\nfirst\n\nsecond\n</think>\n\nanswer"
    s = ThinkSplitter()
    pieces = [p for ch in text for p in s.feed(ch)] + s.flush()  # one character at a time, as a slow stream
    streamed = "".join(t for f, t in pieces if f == "reasoning_content")
    assert streamed == split_reasoning(text)[0] == "first\n\nsecond"


# -- a template without a thinking switch (Qwen2.5's), served by default name from a run's output folder -----------


@pytest.fixture(scope="module")
def qwen25_run(tmp_path_factory):
    """A Qwen2.5-style checkpoint as a run's output: work/adaptive-thinking-1a2b/output, manifest written."""
    from pai_distil.core.artifacts import write_manifest

    out = tiny_checkpoint(tmp_path_factory.mktemp("work") / "adaptive-thinking-1a2b" / "output", arch="qwen2",
                          template=QWEN25_TEMPLATE)
    write_manifest(out, stage="adaptive-thinking", run_id="adaptive-thinking-20260101-120000-1a2b")
    return out


def test_default_served_name_is_the_run_not_the_output_folder(qwen25_run, tmp_path):
    from pai_distil.cloud.deploy.checkpoint import resolve
    from pai_distil_jobs.serve.server import default_served_name

    assert default_served_name(qwen25_run) == "adaptive-thinking-20260101-120000-1a2b"
    assert resolve(str(qwen25_run)).name == "adaptive_thinking_20260101_120000_1a2b"  # as deploying the run id names it
    bare = tmp_path / "output"  # a run's output without its manifest: named by the run's folder
    bare.mkdir()
    assert default_served_name(bare) == tmp_path.name
    assert resolve("oss://models/work/slow-thinking-9f/output/").name == "slow_thinking_9f"


def test_thinking_off_without_a_switch_is_refused(qwen25_run):
    from pai_distil.cloud.deploy.checkpoint import resolve
    from pai_distil_jobs.serve.chat import Engine
    from pai_distil_jobs.serve.server import create_app

    name = resolve(str(qwen25_run)).name  # what `deploy local` serves it as without --name
    with serve_asgi(create_app(Engine(str(qwen25_run), threads=1), name, None, "fp")) as base:
        c = client(base + "/v1")
        assert [m.id for m in c.models.list().data] == ["adaptive_thinking_20260101_120000_1a2b"]  # not "output"
        with pytest.raises(openai.BadRequestError, match="no thinking switch") as err:
            c.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2, extra_body={"enable_thinking": False})
        assert err.value.body["param"] == "enable_thinking"
        assert c.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2,
                                         extra_body={"enable_thinking": True}).choices


def test_thinking_off_with_a_trained_soft_switch_adds_no_think(qwen25_run, tmp_path):
    from real_models import qwen_tokenizer

    from pai_distil_jobs.models.chat_template import record_soft_switch
    from pai_distil_jobs.serve.chat import Engine
    from pai_distil_jobs.serve.server import create_app

    soft = tmp_path / "soft"  # the same checkpoint, marked as trained with /no_think rows
    soft.mkdir()
    for f in qwen25_run.iterdir():
        if f.name != "manifest.json":
            os.symlink(f, soft / f.name)
    record_soft_switch(soft)
    with serve_asgi(create_app(Engine(str(soft), threads=1), "soft", None, "fp")) as base:
        c = client(base + "/v1").chat.completions.with_raw_response
        on = c.create(model="soft", messages=MESSAGES, max_tokens=2, temperature=0)
        off = c.create(model="soft", messages=MESSAGES, max_tokens=2, temperature=0,
                       extra_body={"enable_thinking": False})
    assert off.headers["x-pai-distil-thinking-switch"] == "/no_think"
    assert "x-pai-distil-thinking-switch" not in on.headers
    tok = qwen_tokenizer(QWEN25_TEMPLATE)
    switched = [{"role": "user", "content": MESSAGES[0]["content"] + " /no_think"}]
    lengths = [len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for m in (MESSAGES, switched)]
    assert [on.parse().usage.prompt_tokens, off.parse().usage.prompt_tokens] == lengths


def test_thinking_switch_of_each_template(tmp_path):
    from real_models import R1_TEMPLATE, qwen_tokenizer

    from pai_distil_jobs.models.chat_template import record_soft_switch, switch_thinking_off, thinking_switch

    assert thinking_switch(qwen_tokenizer()) == "template"
    assert thinking_switch(qwen_tokenizer(QWEN25_TEMPLATE)) is None
    assert thinking_switch(qwen_tokenizer(R1_TEMPLATE), tmp_path) is None
    record_soft_switch(tmp_path)
    assert thinking_switch(qwen_tokenizer(QWEN25_TEMPLATE), tmp_path) == "soft"
    assert json.loads((tmp_path / "thinking_switch.json").read_text())["off"] == " /no_think"
    convo = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert switch_thinking_off(convo) == [*convo[:2], {"role": "user", "content": "c /no_think"}]
    assert convo[2]["content"] == "c"  # the caller's messages are left alone
