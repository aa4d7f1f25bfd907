"""The OpenAI chat-completions protocol as served by `deploy local`: request checks, auth, reasoning split.

Pure Python (no torch, no FastAPI): the server, the EAS emulator's front proxy and the tests
share it. Errors use OpenAI's body shape so the official client raises BadRequestError,
AuthenticationError, ... with the server's message.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from pai_distil.core.think import THINK_CLOSE, THINK_OPEN


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error shape, which clients (the openai SDK among them) parse for the message."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


UNAUTHORIZED = error_body("Incorrect or missing token; send it as 'Authorization: Bearer TOKEN'.",
                          "invalid_request_error", "invalid_api_key")


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an Authorization header carries `token` (`Bearer TOKEN`, or the bare token as EAS accepts).

    None as `token` serves without authentication. Compared in constant time.
    """
    if token is None:
        return True
    given = (header or "").strip()
    scheme, _, rest = given.partition(" ")
    if scheme.lower() == "bearer":
        given = rest.strip()
    return hmac.compare_digest(given.encode(), token.encode())


class BadRequest(Exception):
    """A malformed request: answered with 400 and this message."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def text_of(content) -> str | None:
    """Message content as text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return None


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # [{"role", "content"}] with text content
    max_tokens: int | None
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool
    template_kwargs: dict = field(default_factory=dict)


ROLES = ("system", "developer", "user", "assistant", "tool")


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be a number between {lo} and {hi}, got {v!r}", name)
    return float(v)


def parse_chat(body) -> ChatRequest:
    """A chat completion request body, checked field by field; BadRequest names the field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty list", "messages")
    parsed = []
    for i, m in enumerate(messages):
        text = text_of(m.get("content")) if isinstance(m, dict) else None
        if not isinstance(m, dict) or m.get("role") not in ROLES or text is None:
            raise BadRequest(f"messages[{i}] must be an object with 'role' (one of {', '.join(ROLES)}) "
                             "and text 'content'", "messages")
        parsed.append({"role": "system" if m["role"] == "developer" else m["role"], "content": text})
    if body.get("n", 1) not in (1, None):
        raise BadRequest("only n=1 is supported", "n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadRequest(f"'max_tokens' must be a positive integer, got {limit!r}", "max_tokens")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadRequest("'chat_template_kwargs' must be an object, e.g. {\"enable_thinking\": false}",
                         "chat_template_kwargs")
    if "enable_thinking" in kwargs and not isinstance(kwargs["enable_thinking"], bool):
        raise BadRequest("'chat_template_kwargs.enable_thinking' must be true or false", "chat_template_kwargs")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return ChatRequest(model=model, messages=parsed, max_tokens=limit,
                       temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                       top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), stream=bool(body.get("stream")),
                       include_usage=bool(options.get("include_usage")), template_kwargs=kwargs)


class ThinkSplitter:
    """Splits generated text into `reasoning_content` and `content` at `<think>…</think>`, incrementally.

    As vLLM's reasoning parsers do for Qwen3 / DeepSeek-R1: text inside the think block is
    reasoning, the rest is the answer. `in_thought` starts inside a block when the chat
    template already opened `<think>` in the prompt. Text that could be the start of a tag
    is held back until the next piece decides it.
    """

    def __init__(self, in_thought: bool = False):
        self.in_thought = in_thought
        self.started = in_thought  # a think block was seen: leading whitespace of the answer is dropped
        self.answer_begun = False
        self.pending = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        """[(field, text)] pieces to emit for `text`; field is "reasoning_content" or "content"."""
        self.pending += text
        out: list[tuple[str, str]] = []
        while self.pending:
            tag = THINK_CLOSE if self.in_thought else THINK_OPEN
            at = self.pending.find(tag)
            if at >= 0:
                self._emit(out, self.pending[:at])
                self.pending = self.pending[at + len(tag):]
                if not self.in_thought and self.answer_begun:  # a second block inside the answer: keep as text
                    self._emit(out, tag)
                    continue
                self.in_thought, self.started = not self.in_thought, True
                continue
            keep = _partial_suffix(self.pending, tag)
            self._emit(out, self.pending[:len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
            break
        return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._emit(out, self.pending)
        self.pending = ""
        return out

    def _emit(self, out: list, text: str) -> None:
        if not text:
            return
        if self.in_thought:
            out.append(("reasoning_content", text))
            return
        if not self.answer_begun:
            text = text.lstrip() if self.started else text
            if not text:
                return
            self.answer_begun = True
        out.append(("content", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def split_reasoning(text: str, in_thought: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a whole completion."""
    s = ThinkSplitter(in_thought)
    parts = s.feed(text) + s.flush()
    reasoning = "".join(t for f, t in parts if f == "reasoning_content")
    answer = "".join(t for f, t in parts if f == "content")
    return (reasoning.strip() if s.started else None), answer
