"""`protocol.parse_chat` / `parse_completion`: roles, content parts, defaults, options, and every bad request
with its message and field (a field the server would not act on is one of them)."""

from __future__ import annotations

import pytest

from pai_distil.core.protocol import ROLES, BadRequest, ChatRequest, Sampling, parse_chat, parse_completion, text_of


def body(**over):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **over}


def test_minimal_request_gets_the_defaults():
    assert parse_chat(body()) == ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=None,
                                             temperature=1.0, top_p=1.0, stream=False, include_usage=False,
                                             template_kwargs={})


def test_roles_and_content_parts():
    req = parse_chat(body(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": "q", "name": "dropped"},
        {"role": "assistant", "content": []},
        {"role": "tool", "content": "42"},
    ]))
    assert req.messages == [
        {"role": "system", "content": "be brief"},  # developer is the system role
        {"role": "system", "content": "ab"},  # text parts joined
        {"role": "user", "content": "q"},  # other keys dropped
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"},
    ]
    assert ROLES == ("system", "developer", "user", "assistant", "tool")


def test_text_of():
    assert text_of("x") == "x"
    assert text_of([{"type": "text", "text": "a"}, {"type": "text"}]) == "a"
    assert text_of([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]) is None  # not dropped
    assert text_of(None) is None
    assert text_of(3) is None
    assert text_of(["a"]) is None


def test_options():
    req = parse_chat(body(max_tokens=5, temperature=0, top_p=0.5, stream=True, stream_options={"include_usage": True},
                          chat_template_kwargs={"enable_thinking": False}, n=1))
    assert (req.max_tokens, req.temperature, req.top_p, req.stream, req.include_usage, req.template_kwargs) == \
        (5, 0.0, 0.5, True, True, {"enable_thinking": False})
    assert isinstance(req.temperature, float)
    assert parse_chat(body(max_completion_tokens=7, max_tokens=3)).max_tokens == 7  # the newer name wins
    assert parse_chat(body(temperature=None, top_p=None, n=None, stream_options=None)).temperature == 1.0
    assert parse_chat(body(temperature=2, top_p=1)).temperature == 2.0
    req = parse_chat(body(n=3, stop="##", seed=7, logprobs=True, top_logprobs=2, enable_thinking=False, user="u",
                          presence_penalty=0, frequency_penalty=0.0, logit_bias={}, tools=[],
                          response_format={"type": "text"}))
    assert (req.n, req.stop, req.seed, req.logprobs, req.top_logprobs, req.template_kwargs) == \
        (3, ["##"], 7, True, 2, {"enable_thinking": False})  # DashScope's top-level enable_thinking
    assert parse_chat(body(stop=["a", "b"], enable_thinking=True, chat_template_kwargs={"enable_thinking": True})) \
        .stop == ["a", "b"]
    assert parse_chat(body(presence_penalty=None, tool_choice=None)).n == 1  # null asks for nothing


def test_completion_request():
    req = parse_completion({"model": "m", "prompt": ["a", "b"], "n": 2, "logprobs": 0, "echo": False, "stop": "x",
                            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    assert (req.model, req.prompts, req.logprobs) == ("m", ["a", "b"], 0)
    assert req.sampling == Sampling(max_tokens=16, temperature=0.0, n=2, stop=["x"], stream=True, include_usage=True)
    assert parse_completion({"model": "m", "prompt": "a", "max_tokens": 3}).prompts == ["a"]


@pytest.mark.parametrize("request_body, message, param", [
    ({"model": "m"}, "'prompt' must be a non-empty string or a list of them (token-id prompts are not supported)",
     "prompt"),
    ({"model": "m", "prompt": [1, 2]}, "'prompt' must be a non-empty string or a list of them (token-id prompts are "
     "not supported)", "prompt"),
    ({"model": "m", "prompt": "a", "echo": True}, "'echo' is not supported by this server; remove it or send false",
     "echo"),
    ({"model": "m", "prompt": "a", "logprobs": True}, "'logprobs' must be an integer from 0 to 20, got True", "logprobs"),
    ({"model": "m", "prompt": "a", "suffix": "z"}, "'suffix' is not supported by this server; remove it", "suffix"),
    ({"model": "m", "prompt": "a", "best_of": 3}, "'best_of' is not supported by this server; remove it", "best_of"),
])
def test_bad_completion_requests(request_body, message, param):
    with pytest.raises(BadRequest) as err:
        parse_completion(request_body)
    assert (err.value.message, err.value.param) == (message, param)


def test_refuse_names_the_first_option_set():
    parse_chat(body(seed=1)).refuse("n", "stop", "logprobs")
    with pytest.raises(BadRequest, match="'stop' is not supported"):
        parse_chat(body(stop="x")).refuse("n", "stop", "logprobs")


MESSAGE_ERROR = ("messages[{}] must be an object with 'role' (one of system, developer, user, assistant, tool) "
                 "and text 'content' (a string or text parts)")


@pytest.mark.parametrize("request_body, message, param", [
    ([], "request body must be a JSON object", None),
    ("{}", "request body must be a JSON object", None),
    ({"messages": [{"role": "user", "content": "hi"}]}, "'model' is required and must be a string", "model"),
    (body(model=""), "'model' is required and must be a string", "model"),
    (body(model=3), "'model' is required and must be a string", "model"),
    ({"model": "m"}, "'messages' is required and must be a non-empty list", "messages"),
    (body(messages=[]), "'messages' is required and must be a non-empty list", "messages"),
    (body(messages={"role": "user"}), "'messages' is required and must be a non-empty list", "messages"),
    (body(messages=["hi"]), MESSAGE_ERROR.format(0), "messages"),
    (body(messages=[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]), MESSAGE_ERROR.format(1),
     "messages"),
    (body(messages=[{"content": "b"}]), MESSAGE_ERROR.format(0), "messages"),
    (body(messages=[{"role": "user"}]), MESSAGE_ERROR.format(0), "messages"),
    (body(messages=[{"role": "user", "content": 5}]), MESSAGE_ERROR.format(0), "messages"),
    (body(messages=[{"role": "user", "content": ["text"]}]), MESSAGE_ERROR.format(0), "messages"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), MESSAGE_ERROR.format(0),
     "messages"),
    (body(n=0), "'n' must be an integer from 1 to 64, got 0", "n"),
    (body(n=65), "'n' must be an integer from 1 to 64, got 65", "n"),
    (body(stop=""), "'stop' must be a non-empty string or a list of 1 to 16 of them, got ''", "stop"),
    (body(stop=[]), "'stop' must be a non-empty string or a list of 1 to 16 of them, got []", "stop"),
    (body(stop=["a", 3]), "'stop' must be a non-empty string or a list of 1 to 16 of them, got ['a', 3]", "stop"),
    (body(seed="1"), "'seed' must be an integer from -9223372036854775808 to 18446744073709551615, got '1'", "seed"),
    (body(logprobs=1), "'logprobs' must be true or false, got 1", "logprobs"),
    (body(top_logprobs=2), "'top_logprobs' needs 'logprobs': true", "top_logprobs"),
    (body(logprobs=True, top_logprobs=21), "'top_logprobs' must be an integer from 0 to 20, got 21", "top_logprobs"),
    (body(enable_thinking="no"), "'enable_thinking' must be true or false", "enable_thinking"),
    (body(enable_thinking=False, chat_template_kwargs={"enable_thinking": True}),
     "'enable_thinking' and 'chat_template_kwargs.enable_thinking' disagree; send one", "enable_thinking"),
    (body(presence_penalty=0.5), "'presence_penalty' is not supported by this server; remove it", "presence_penalty"),
    (body(top_k=20), "'top_k' is not supported by this server; remove it", "top_k"),
    (body(tools=[{"type": "function"}]), "'tools' is not supported by this server; remove it", "tools"),
    (body(presence_penalty=False), "'presence_penalty' is not supported by this server; remove it", "presence_penalty"),
    (body(stream_options={"continuous_usage_stats": True}),
     "'stream_options.continuous_usage_stats' is not supported by this server; remove it", "stream_options"),
    (body(max_tokens=0), "'max_tokens' must be a positive integer, got 0", "max_tokens"),
    (body(max_tokens=True), "'max_tokens' must be a positive integer, got True", "max_tokens"),
    (body(max_tokens=2.0), "'max_tokens' must be a positive integer, got 2.0", "max_tokens"),
    (body(max_completion_tokens="9"), "'max_tokens' must be a positive integer, got '9'", "max_tokens"),
    (body(chat_template_kwargs=["x"]), "'chat_template_kwargs' must be an object, e.g. {\"enable_thinking\": false}",
     "chat_template_kwargs"),
    (body(chat_template_kwargs={"enable_thinking": "no"}), "'chat_template_kwargs.enable_thinking' must be true or false",
     "chat_template_kwargs"),
    (body(stream_options=True), "'stream_options' must be an object", "stream_options"),
    (body(temperature=2.5), "'temperature' must be a number between 0.0 and 2.0, got 2.5", "temperature"),
    (body(temperature=-1), "'temperature' must be a number between 0.0 and 2.0, got -1", "temperature"),
    (body(temperature=True), "'temperature' must be a number between 0.0 and 2.0, got True", "temperature"),
    (body(temperature="1"), "'temperature' must be a number between 0.0 and 2.0, got '1'", "temperature"),
    (body(top_p=0), "'top_p' must be a number between 1e-09 and 1.0, got 0", "top_p"),
    (body(top_p=1.5), "'top_p' must be a number between 1e-09 and 1.0, got 1.5", "top_p"),
])
def test_bad_requests(request_body, message, param):
    with pytest.raises(BadRequest) as err:
        parse_chat(request_body)
    assert err.value.message == message
    assert str(err.value) == message
    assert err.value.param == param
