"""`protocol.parse_chat`: roles, content parts, defaults, and every bad request with its message and field."""

from __future__ import annotations

import pytest

from pai_distil.core.protocol import ROLES, BadRequest, ChatRequest, parse_chat, text_of


def body(**over):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **over}


def test_minimal_request_gets_the_defaults():
    assert parse_chat(body()) == ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=None,
                                             temperature=1.0, top_p=1.0, stream=False, include_usage=False,
                                             template_kwargs={})


def test_roles_and_content_parts():
    req = parse_chat(body(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}},
                                       {"type": "text", "text": "b"}]},
        {"role": "user", "content": "q", "name": "dropped"},
        {"role": "assistant", "content": []},
        {"role": "tool", "content": "42"},
    ]))
    assert req.messages == [
        {"role": "system", "content": "be brief"},  # developer is the system role
        {"role": "system", "content": "ab"},  # text parts joined, other parts dropped
        {"role": "user", "content": "q"},  # other keys dropped
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"},
    ]
    assert ROLES == ("system", "developer", "user", "assistant", "tool")


def test_text_of():
    assert text_of("x") == "x"
    assert text_of([{"type": "text", "text": "a"}, {"type": "text"}, {"type": "other", "text": "no"}]) == "a"
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


MESSAGE_ERROR = ("messages[{}] must be an object with 'role' (one of system, developer, user, assistant, tool) "
                 "and text 'content'")


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
    (body(n=2), "only n=1 is supported", "n"),
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
