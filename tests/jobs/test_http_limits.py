"""The three HTTP servers answer 400 or 413, never 500, for deeply nested JSON, lone surrogates
and oversize bodies, and keep serving: each runs on loopback with its real model behind it."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import TEST_API_KEY, serve_asgi, start_teacher
from serving import micro_checkpoint, micro_reward_checkpoint

from pai_distil.core.env_numbers import MAX_BODY_MB as MAX_BYTES_ENV
from pai_distil.core.http_limits import json_problem

NESTED = ("[" * 100_000 + "]" * 100_000).encode()
SURROGATE = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800 alone"}], "items": ["\\udfff"]}'


def test_json_problem_names_what_is_wrong():
    assert json_problem(b'{"a": [1, {"b": "\\u00e9"}]}') is None
    assert json_problem(b'{"a": "\\ud83d\\ude00"}') is None  # a proper pair is one character
    assert json_problem(SURROGATE).startswith("request body holds a lone surrogate")
    assert json_problem(NESTED) == "request body nests deeper than 64 levels"
    assert json_problem(b"[" * 65 + b"]" * 65) == "request body nests deeper than 64 levels"
    assert json_problem(b"[" * 64 + b"]" * 64) is None
    assert json_problem(b"\xff\xfe") == "request body is not UTF-8 text"
    assert json_problem(b"{nope") == "request body is not valid JSON"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(name, base URL, path, a good request body) of each server, with a 64 KiB body limit."""
    import contextlib

    from pai_distil_jobs.train.reward import RewardScorer
    from pai_distil_jobs.serve.reward import create_app as reward_app
    from pai_distil_jobs.serve.chat import Engine
    from pai_distil_jobs.serve.server import create_app as model_app

    mp = pytest.MonkeyPatch()
    mp.setenv(MAX_BYTES_ENV, str(64 / 1024))
    root = tmp_path_factory.mktemp("ckpts")
    student = micro_checkpoint(root / "student")
    scorer = RewardScorer(micro_reward_checkpoint(root / "rm"))
    chat = {"model": "student", "messages": [{"role": "user", "content": "1+1?"}], "max_tokens": 4}
    with contextlib.ExitStack() as stack:
        teacher = stack.enter_context(start_teacher(api_key=None))
        reward = stack.enter_context(serve_asgi(reward_app(scorer.score, None)))
        model = stack.enter_context(serve_asgi(model_app(Engine(str(student)), "student", None, "fp")))
        yield [("teacher", teacher.base_url.removesuffix("/v1"), "/v1/chat/completions", {**chat, "model": "oracle"}),
               ("reward", reward, "/v1/score", {"items": [{"prompt": "1+1?", "completion": "2"}]}),
               ("model", model, "/v1/chat/completions", chat)]
    mp.undo()


@pytest.mark.parametrize("case", ["nested", "surrogate", "oversize", "oversize-chunked"])
def test_bad_bodies_are_4xx_and_the_server_keeps_serving(servers, case):
    big = json.dumps({"items": ["x" * 70_000]}).encode()
    body, status = {"nested": (NESTED, 413), "surrogate": (SURROGATE, 400), "oversize": (big, 413),
                    "oversize-chunked": ([big[:40_000], big[40_000:]], 413)}[case]
    for name, url, path, good in servers:
        content = body if isinstance(body, bytes) else iter(body)  # an iterator is sent chunked, without a length
        r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"]["message"], name
        assert httpx.post(url + path, json=good, timeout=120).status_code == 200, name


def test_nesting_within_the_size_limit_is_400(servers):
    body = ("[" * 1000 + "]" * 1000).encode()
    for name, url, path, _ in servers:
        r = httpx.post(url + path, content=body, timeout=30)
        assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"], name


def test_the_limit_follows_the_setting(monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, "0.001")  # about 1 KB
    with start_teacher(api_key=TEST_API_KEY) as t:
        r = httpx.post(f"{t.base_url}/chat/completions", content=b"[" + b"0," * 1000 + b"0]", timeout=30)
        assert r.status_code == 413 and "over 1048 bytes" in r.json()["error"]["message"]
