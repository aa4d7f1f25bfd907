"""The OpenAI chat-completions and completions protocol as served by `deploy local`: request
checks, auth, reasoning split.

Pure Python (no torch, no FastAPI): the server, the synthetic teacher, the EAS emulator's front
proxy and the tests share it. A request field the server would not act on is refused with a 400
naming it, never ignored: a client that asks for `stop` or a penalty must not get an answer that
silently lacks it. Errors use OpenAI's body shape so the official client raises BadRequestError,
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
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text", ""), str) for p in content):
        return "".join(p.get("text", "") for p in content)
    return None


@dataclass
class Sampling:
    """What both completion APIs ask of the decoder."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest(Sampling):
    model: str = ""
    messages: list[dict] = field(default_factory=list)  # [{"role", "content"}] with text content
    template_kwargs: dict = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0

    def refuse(self, *names: str) -> None:
        """BadRequest for any option in `names` set to other than its default: for a server that parses
        the whole protocol but does not do these."""
        defaults = ChatRequest()
        for name in names:
            if getattr(self, name) != getattr(defaults, name):
                raise BadRequest(f"'{name}' is not supported by this server; remove it", name)


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str]
    sampling: Sampling
    logprobs: int | None = None  # top alternatives per token; None: no logprobs


ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N, MAX_STOPS, MAX_TOP_LOGPROBS = 64, 16, 20
# Fields accepted only at a value that asks for nothing (what SDKs and frameworks send by default).
INERT = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],),
         "response_format": ({"type": "text"},), "best_of": (1,)}
SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
                   "user"}  # `user` identifies the caller to the operator; it asks nothing of the model
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                                 "chat_template_kwargs", "enable_thinking"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "logprobs", "echo"}


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be a number between {lo} and {hi}, got {v!r}", name)
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int, default: int | None = None, shown: str | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        bounds = "a positive integer" if hi >= 2**62 and lo == 1 else f"an integer from {lo} to {hi}"
        raise BadRequest(f"'{shown or name}' must be {bounds}, got {v!r}", shown or name)
    return v


def _refuse_unknown(body: dict, known: set[str]) -> None:
    """A field this server would not act on is a 400 naming it, never silently ignored."""
    for name, value in body.items():
        if name in known or value is None or (name in INERT and any(value == v and type(value) is type(v)
                                                                     for v in INERT[name])):
            continue
        raise BadRequest(f"'{name}' is not supported by this server; remove it", name)


def _stops(value) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return []
    if not isinstance(stops, list) or not 0 < len(stops) <= MAX_STOPS or \
            not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"'stop' must be a non-empty string or a list of 1 to {MAX_STOPS} of them, got {value!r}",
                         "stop")
    return stops


def _sampling(body: dict, max_tokens_field: str = "max_tokens") -> Sampling:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    for key in options:
        if key != "include_usage":
            raise BadRequest(f"'stream_options.{key}' is not supported by this server; remove it", "stream_options")
    return Sampling(max_tokens=_integer(body, max_tokens_field, 1, 2**63, shown="max_tokens"),
                    temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                    top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), n=_integer(body, "n", 1, MAX_N, 1),
                    stop=_stops(body.get("stop")), seed=_integer(body, "seed", -2**63, 2**64 - 1),
                    stream=bool(body.get("stream")), include_usage=bool(options.get("include_usage")))


def _model(body) -> str:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    return model


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty list", "messages")
    parsed = []
    for i, m in enumerate(messages):
        text = text_of(m.get("content")) if isinstance(m, dict) else None
        if not isinstance(m, dict) or m.get("role") not in ROLES or text is None:
            raise BadRequest(f"messages[{i}] must be an object with 'role' (one of {', '.join(ROLES)}) "
                             "and text 'content' (a string or text parts)", "messages")
        parsed.append({"role": "system" if m["role"] == "developer" else m["role"], "content": text})
    return parsed


def _template_kwargs(body: dict) -> dict:
    """`chat_template_kwargs`, with DashScope's top-level `enable_thinking` folded in."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadRequest("'chat_template_kwargs' must be an object, e.g. {\"enable_thinking\": false}",
                         "chat_template_kwargs")
    if "enable_thinking" in kwargs and not isinstance(kwargs["enable_thinking"], bool):
        raise BadRequest("'chat_template_kwargs.enable_thinking' must be true or false", "chat_template_kwargs")
    top = body.get("enable_thinking")
    if top is None:
        return kwargs
    if not isinstance(top, bool):
        raise BadRequest("'enable_thinking' must be true or false", "enable_thinking")
    if kwargs.get("enable_thinking", top) != top:
        raise BadRequest("'enable_thinking' and 'chat_template_kwargs.enable_thinking' disagree; send one",
                         "enable_thinking")
    return {**kwargs, "enable_thinking": top}


def parse_chat(body) -> ChatRequest:
    """A chat completion request body, checked field by field; BadRequest names the field."""
    model = _model(body)
    messages = _messages(body.get("messages"))
    max_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    s = _sampling(body, max_field)
    kwargs = _template_kwargs(body)
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise BadRequest(f"'logprobs' must be true or false, got {body['logprobs']!r}", "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
    if top and not body.get("logprobs"):
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    _refuse_unknown(body, CHAT_FIELDS)
    return ChatRequest(model=model, messages=messages, template_kwargs=kwargs, logprobs=bool(body.get("logprobs")),
                       top_logprobs=top, **vars(s))


def parse_completion(body) -> CompletionRequest:
    """A (legacy) completions request body: text prompts, no echo; BadRequest names the field."""
    model = _model(body)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise BadRequest("'prompt' must be a non-empty string or a list of them (token-id prompts are not "
                         "supported)", "prompt")
    if body.get("echo"):
        raise BadRequest("'echo' is not supported by this server; remove it or send false", "echo")
    s = _sampling(body)
    s.max_tokens = s.max_tokens or 16  # OpenAI's default for completions
    logprobs = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    _refuse_unknown(body, COMPLETION_FIELDS)
    return CompletionRequest(model=model, prompts=prompts, sampling=s, logprobs=logprobs)


class ThinkSplitter:
    """Splits generated text into `reasoning_content` and `content` at `<think>…</think>`, incrementally.

    As vLLM's reasoning parsers do for Qwen3 / DeepSeek-R1: text inside the think block is
    reasoning, the rest is the answer. `in_thought` starts inside a block when the chat
    template already opened `<think>` in the prompt. Text that could be the start of a tag
    is held back until the next piece decides it, and so is whitespace at the end of the
    thought: streamed or whole, the reasoning has no surrounding newlines.
    """

    def __init__(self, in_thought: bool = False):
        self.in_thought = in_thought
        self.started = in_thought  # a think block was seen: leading whitespace of the answer is dropped
        self.answer_begun = False
        self.thought_begun = False
        self.thought_space = ""  # whitespace at the thought's end so far: emitted only if more thought follows
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
                self.in_thought, self.started, self.thought_space = not self.in_thought, True, ""
                continue
            keep = partial_suffix(self.pending, tag)
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
            self._emit_thought(out, text)
            return
        if not self.answer_begun:
            text = text.lstrip() if self.started else text
            if not text:
                return
            self.answer_begun = True
        out.append(("content", text))


    def _emit_thought(self, out: list, text: str) -> None:
        if not self.thought_begun:
            text = text.lstrip()
            self.thought_begun = bool(text)
        body = text.rstrip()
        if body:
            out.append(("reasoning_content", self.thought_space + body))
            self.thought_space = ""
        self.thought_space += text[len(body):]


def partial_suffix(text: str, tag: str) -> int:
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
