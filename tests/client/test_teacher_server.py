"""The synthetic teacher over real HTTP: OpenAI shapes, auth, determinism, verbosity, noise, CLI."""

from __future__ import annotations

import httpx
import openai
import pytest
from click.testing import CliRunner
from conftest import TEST_API_KEY

from pai_distil.cli import cli
from pai_distil.core import world

PROBLEMS = world.generate_problems(12, seed=3, levels=[3])
HTTP = httpx.Client(timeout=10)  # one client: a fresh one per request costs more than the request


def chat(t, content: str, system: str | None = None, model: str = "oracle", key: str | None = TEST_API_KEY, **extra):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return HTTP.post(f"{t.base_url}/chat/completions", headers=headers,
                      json={"model": model, "messages": messages, **extra})


def answer(t, content: str, **kw) -> str:
    r = chat(t, content, **kw)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_health_and_models(synthetic_teacher):
    t = synthetic_teacher
    assert httpx.get(t.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    r = httpx.get(f"{t.base_url}/models", headers={"Authorization": f"Bearer {TEST_API_KEY}"})
    assert r.status_code == 200
    assert {m["id"] for m in r.json()["data"]} == {"oracle", "oracle-noisy", "judge"}


@pytest.mark.parametrize("key", [None, "wrong"])
def test_bad_key_is_401_in_openai_error_shape(synthetic_teacher, key):
    r = chat(synthetic_teacher, PROBLEMS[0].text, key=key)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and "API key" in err["message"]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    assert httpx.get(f"{synthetic_teacher.base_url}/models", headers=headers).status_code == 401


def test_malformed_requests_are_400_with_a_message(synthetic_teacher):
    t = synthetic_teacher
    auth = {"Authorization": f"Bearer {TEST_API_KEY}"}
    url = f"{t.base_url}/chat/completions"
    r = httpx.post(url, headers=auth, content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(url, headers=auth, json={"model": "oracle"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(url, headers=auth, json={"model": "oracle", "messages": [{"role": "user"}]})
    assert r.status_code == 400 and "messages[0]" in r.json()["error"]["message"]
    r = chat(t, PROBLEMS[0].text, model="gpt-unknown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_answers_are_correct_and_deterministic(synthetic_teacher):
    for p in PROBLEMS[:4]:
        first = answer(synthetic_teacher, p.text, model="oracle-noisy")
        assert answer(synthetic_teacher, p.text, model="oracle-noisy") == first
        assert world.verify(answer(synthetic_teacher, p.text), p.answer)


def test_verbosity_from_system_message_changes_length(synthetic_teacher):
    p = PROBLEMS[0]
    lengths = [len(world.split_thought(answer(synthetic_teacher, p.text, system=f"Reasoning verbosity level {rv}"))[0])
               for rv in (0, 2, 5, 9)]
    assert lengths[0] == 0 and lengths == sorted(lengths) and len(set(lengths)) == 4
    r = chat(synthetic_teacher, p.text, system="verbosity: 9")
    assert r.json()["usage"]["completion_tokens"] > chat(synthetic_teacher, p.text).json()["usage"]["completion_tokens"]


def test_noisy_model_makes_some_errors(teacher_factory):
    t = teacher_factory(error_rate=0.5, seed=1)
    problems = world.generate_problems(24, seed=5)
    verdicts = [world.verify(answer(t, p.text, model="oracle-noisy"), p.answer) for p in problems]
    assert 0 < sum(verdicts) < len(verdicts)
    assert all(world.verify(answer(t, p.text), p.answer) for p in problems)


def test_unparseable_prompt_gets_a_plain_refusal(synthetic_teacher):
    text = answer(synthetic_teacher, "What is the capital of France?")
    assert "synthetic" in text and "\\boxed" not in text


def test_max_tokens_cuts_the_answer(synthetic_teacher):
    r = chat(synthetic_teacher, PROBLEMS[0].text, max_tokens=5).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5


def test_official_openai_client_works(synthetic_teacher):
    client = openai.OpenAI(base_url=synthetic_teacher.base_url, api_key=TEST_API_KEY, max_retries=0)
    assert {m.id for m in client.models.list()} == {"oracle", "oracle-noisy", "judge"}
    p = PROBLEMS[1]
    resp = client.chat.completions.create(model="oracle", messages=[
        {"role": "system", "content": "Reasoning verbosity level 3"}, {"role": "user", "content": p.text}])
    assert world.verify(resp.choices[0].message.content, p.answer)
    assert resp.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="oracle", stream=True, messages=[{"role": "user", "content": p.text}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    plain = client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": p.text}])
    assert text == plain.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=synthetic_teacher.base_url, api_key="wrong", max_retries=0).models.list()


def test_fail_rate_injects_retryable_errors(teacher_factory):
    t = teacher_factory(fail_rate=0.5)
    codes = [chat(t, PROBLEMS[0].text).status_code for _ in range(8)]
    assert codes.count(200) == 4 and set(codes) == {200, 500, 429}
    client = openai.OpenAI(base_url=t.base_url, api_key=TEST_API_KEY, max_retries=2)
    for p in PROBLEMS[:4]:
        out = client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": p.text}])
        assert world.verify(out.choices[0].message.content, p.answer)


def test_reasoning_content_mode(teacher_factory):
    t = teacher_factory(reasoning_content=True)
    msg = chat(t, PROBLEMS[0].text).json()["choices"][0]["message"]
    assert "<think>" not in msg["content"] and "Step 1:" in msg["reasoning_content"]
    assert world.verify(msg["content"], PROBLEMS[0].answer)


def test_cli_refuses_without_key(monkeypatch):
    """The synthetic teacher is the only one served: `--synthetic` is accepted, not needed; a key (or --no-auth) is."""
    monkeypatch.delenv("PAI_DISTIL_TEACHER_API_KEY", raising=False)
    for args in (["teacher", "serve", "--synthetic"], ["teacher", "serve"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and "PAI_DISTIL_TEACHER_API_KEY" in r.output and "--no-auth" in r.output
        assert "Traceback" not in r.output


def test_cli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, pai_distil.cli.teacher; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
