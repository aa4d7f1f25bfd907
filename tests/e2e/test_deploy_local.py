"""`pai-distil deploy local`: a real server process on loopback, asked with the official openai client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from conftest import ROOT
from pai_distil.core.protocol import ThinkSplitter, split_reasoning
from serving import micro_checkpoint, start_local

TOKEN = "serve-token-not-a-secret"
PROMPT = "Start with 7. Add 5, then multiply by 3. Work modulo 10. What is the result?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return micro_checkpoint(tmp_path_factory.mktemp("ckpt") / "student", seed=0)


@pytest.fixture(scope="module")
def server(ckpt):
    with start_local(ckpt, TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def expected(ckpt):
    """The checkpoint's own greedy answers, decoded here through the same chat template."""
    from pai_distil_jobs.models.generation import generate
    from pai_distil_jobs.models.models import load_model

    model, tok = load_model(str(ckpt))
    out = {}
    for thinking in (None, False):
        text = generate(model, tok, [PROMPT], max_new_tokens=24, enable_thinking=thinking)[0]["text"]
        out[thinking] = split_reasoning(text)
    return out


def client(url: str, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def ask(url: str, **kw):
    return client(url).chat.completions.create(model="student", messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=24, temperature=0, **kw)


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data] == ["student"]
    health = httpx.get(server.removesuffix("/v1") + "/health").json()  # no token needed: probes
    assert health["status"] == "ok" and health["system_fingerprint"].startswith("fp_")


@pytest.mark.parametrize("thinking", [None, False])
def test_answers_are_the_checkpoints_greedy_decoding(server, expected, thinking):
    extra = {} if thinking is None else {"extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    r = ask(server, **extra)
    reasoning, answer = expected[thinking]
    assert r.choices[0].message.content == answer
    assert getattr(r.choices[0].message, "reasoning_content", None) == reasoning
    assert r.usage.completion_tokens <= 24 and r.model == "student"


def test_enable_thinking_reaches_the_chat_template(server):
    on, off = ask(server), ask(server, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # False pre-fills an empty thought in the prompt (`<think>\n\n</think>\n\n`), as Qwen3's template does
    assert off.usage.prompt_tokens > on.usage.prompt_tokens


def test_streaming_gives_the_same_answer(server):
    whole = ask(server)
    chunks = list(ask(server, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    thought = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert thought == (getattr(whole.choices[0].message, "reasoning_content", None) or "")  # no extra newlines
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    prompts = [f"Start with {i}. Add 3. Work modulo 10. What is the result?" for i in range(5)]

    async def one(c, p):
        r = await c.chat.completions.create(model="student", messages=[{"role": "user", "content": p}],
                                            max_tokens=16, temperature=0)
        return r.choices[0].message.content

    async def together():
        async with openai.AsyncOpenAI(base_url=server, api_key=TOKEN, max_retries=0) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    sequential = [client(server).chat.completions.create(
        model="student", messages=[{"role": "user", "content": p}], max_tokens=16, temperature=0).choices[0].message.content
        for p in prompts]
    assert asyncio.run(together()) == sequential


@pytest.mark.parametrize("key", [None, "wrong-token"])
def test_no_or_wrong_token_is_401_and_the_server_keeps_serving(server, key):
    if key is None:
        resp = httpx.post(server + "/chat/completions", json={"model": "student", "messages": []})
        assert resp.status_code == 401 and "token" in resp.json()["error"]["message"]
    else:
        with pytest.raises(openai.AuthenticationError):
            client(server, key).models.list()
    assert ask(server).choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    ({"model": "student"}, "'messages' is required"),
    ({"model": "student", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "'max_tokens'"),
    ({"model": "student", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
    ({"model": "student", "messages": [{"role": "user", "content": "x"}],
      "chat_template_kwargs": {"enable_thinking": "yes"}}, "enable_thinking"),
    ({"model": "student", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, "context"),
    ({"model": "student", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "'temperature'"),
])
def test_malformed_requests_are_400_with_a_message(server, body, fragment):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(server + "/chat/completions", headers=headers, **kw)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]["message"]
    assert ask(server).choices[0].message.content is not None  # still serving


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError, match="serves 'student'"):
        client(server).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("cuts", [[1], [1, 2, 3], [5, 7], list(range(1, 60))])
def test_reasoning_split_does_not_depend_on_how_text_arrives(cuts):
    text = "<think>\nStart with 7. 7 + 5 = 12 → 2.\n</think>\n\nThe answer is 2. Not a <thin tag."
    pieces, last = [], 0
    for c in [c for c in cuts if c < len(text)] + [len(text)]:
        pieces.append(text[last:c])
        last = c
    s = ThinkSplitter()
    out = [p for piece in pieces for p in s.feed(piece)] + s.flush()
    reasoning = "".join(t for f, t in out if f == "reasoning_content")
    answer = "".join(t for f, t in out if f == "content")
    assert reasoning.strip() == "Start with 7. 7 + 5 = 12 → 2."
    assert answer == "The answer is 2. Not a <thin tag."


def test_split_of_a_prompt_that_opened_the_thought_and_of_plain_answers():
    assert split_reasoning("a thought</think>\n\nanswer", in_thought=True) == ("a thought", "answer")
    assert split_reasoning("just an answer") == (None, "just an answer")
    assert split_reasoning("<think>\n\n</think>\n\n42") == ("", "42")


def test_cli_errors_are_one_line(tmp_path, ckpt):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pai_distil", "deploy", "local", *args], cwd=ROOT,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, fragment in ([(str(empty),), "no config.json"], [(str(ckpt), "--image", "x"), "--image applies"],
                           [("oss://bucket/ckpt/",), "is on OSS"]):
        proc = run(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _cli(*args, home, **env):
    import os
    import subprocess
    import sys

    full = {**{k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}, "PAI_DISTIL_HOME": str(home),
            **env}
    return subprocess.run([sys.executable, "-m", "pai_distil", *args], cwd=ROOT, capture_output=True, text=True,
                          env=full, timeout=600)


def test_chat_streams_answers_and_toggles_thinking(server, tmp_path, expected):
    proc = _cli("chat", server.removesuffix("/v1"), "--temperature", "0", "--max-tokens", "24",
                "--message", PROMPT, "--message", "/thinking off", "--message", "/reset", "--message", PROMPT,
                home=tmp_path, OPENAI_API_KEY=TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert "thinking off" in proc.stderr and "conversation cleared" in proc.stderr
    out = proc.stdout
    assert expected[None][1] in out and expected[False][1] in out
    assert out.index(expected[None][1]) < out.rindex(expected[False][1])


def test_chat_with_a_wrong_token_is_one_line(server, tmp_path):
    proc = _cli("chat", server, "--message", "hi", home=tmp_path, OPENAI_API_KEY="wrong")
    assert proc.returncode == 2 and "refused the token" in proc.stderr and proc.stderr.count("\n") == 1


def test_evaluate_endpoint_reports_both_thinking_modes(server, tmp_path):
    proc = _cli("evaluate", "--endpoint", server, "-n", "6", "--max-new-tokens", "8", "--thinking", "both",
                home=tmp_path, OPENAI_API_KEY=TOKEN)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "report.json").read_text())
    assert [(m["name"], m["kind"], m["enable_thinking"]) for m in report["models"]] == [
        ("student+think", "endpoint", True), ("student+no_think", "endpoint", False)]
    assert report["n_problems"] == 6 and all(m["overall"]["n"] == 6 for m in report["models"])
