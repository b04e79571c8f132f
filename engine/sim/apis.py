"""The three APIs the built-in target speaks (part of :mod:`engine.sim`): requests, replies, errors, headers.

``/v1/chat/completions`` (OpenAI Chat Completions), ``/v1/responses`` (OpenAI Responses) and
``/v1/messages`` (Anthropic Messages): each reads its own request shape into one ask
``(model, text, temperature, max_tokens, seed, prompt_tokens)``, writes its own reply, error
body and rate-limit headers (``x-ratelimit-*`` with durations and ``retry-after-ms`` for OpenAI;
``anthropic-ratelimit-*`` with RFC 3339 resets and whole-second ``retry-after`` for Anthropic),
and says overloaded its own way (503; Anthropic's 529 ``overloaded_error``). The server does the
rest (answers, quotas, faults) once for all three. Plain functions: the chat path costs what it did.

Usage::

    api = SIM_APIS[b"/v1/messages"]
    problem, ask = api.parse(orjson.loads(body))
    payload = api.reply(7, "ft-5x", "The number is 11246.", False, 30, 6)
"""

from __future__ import annotations

import datetime
import math
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.sim.answers import estimate_tokens
from engine.sim.http import Reply, error_reply, http_response

__all__ = ["SIM_APIS", "Ask", "SimApi", "duration"]

# (model, the last user text, temperature, max_tokens or None, seed or None, prompt tokens)
Ask = tuple[str, str, float, int | None, int | None, int]
Parse = Callable[[Any], tuple[str, Ask | None]]
# (sequence number, model, reply text, cut at max_tokens?, prompt tokens, completion tokens) -> JSON
Build = Callable[[int, str, str, bool, int, int], bytes]
# (limit per minute, remaining, seconds until the window frees, unit: b"requests" | b"tokens") -> header lines
RateLines = Callable[[float, float, float, bytes], bytes]


@dataclass(frozen=True, slots=True)
class SimApi:
    """One API of the target: how it reads a request and writes replies, errors and limit headers.

    Usage: ``SIM_APIS[b"/v1/responses"].name  # 'responses'``
    """

    name: str
    parse: Parse
    reply: Build
    empty: Callable[[str], bytes]  # a well-formed reply holding nothing (the empty_choices fault)
    truncated: bytes  # the start of a reply, cut (the malformed fault)
    error: Callable[..., Reply]  # (status, message, kind, *, keep_alive, code=None, extra=b"", delay=0.0)
    retry: Callable[[float], bytes]  # the header lines a 429 asking to wait this long carries
    rate_lines: RateLines
    overloaded: int  # the status of "overloaded, try again": 503, or Anthropic's 529


def duration(seconds: float) -> str:
    """OpenAI's reset format: "120ms", "1.5s", "6m0s". Usage: ``duration(0.12)  # '120ms'``"""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"


def _text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or the text of its parts (any API's part types)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
        )
    return None


def _sampling(request: Mapping[str, Any], high: float, max_key: tuple[str, ...], least: int,
              ) -> tuple[str, tuple[float, int | None, int | None] | None]:
    """(problem, None) or ("", (temperature, max_tokens, seed)), as each API checks them."""
    if request.get("stream"):
        return "engine-sim does not support stream=true.", None
    temperature = request.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= high:
        return f"Invalid 'temperature': {temperature!r}; expected a number in [0, {high:g}].", None
    max_tokens = None
    for name in max_key:  # the first one given
        if (max_tokens := request.get(name)) is not None:
            break
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < least):
        return f"Invalid '{max_key[-1]}': {max_tokens!r}; expected an integer >= {least}.", None
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"Invalid 'seed': {seed!r}; expected an integer.", None
    return "", (float(temperature), max_tokens, seed)


def _turns(items: list[Any], default_role: str | None) -> tuple[str | None, int] | None:
    """(the last user text or None, the prompt tokens of every text) of message items, in one pass;
    None when an item is not an object. The sim reads every request: one loop, no generators."""
    last, tokens = None, 3
    for item in items:
        if not isinstance(item, dict):
            return None
        content = item.get("content")
        text = content if isinstance(content, str) else _text_of(content)
        if text is not None:
            tokens += estimate_tokens(text) + 4
            if item.get("role", default_role) == "user":
                last = text
    return last, tokens


def _extra_tokens(text: str | None) -> int:
    """The prompt tokens of a system prompt or instructions given apart from the messages."""
    return 0 if text is None else estimate_tokens(text) + 4


# -- Chat Completions ---------------------------------------------------------------------------


def parse_chat(request: Any) -> tuple[str, Ask | None]:
    """Validate a chat request: (problem, None) or ("", ask)."""
    if not isinstance(request, dict):
        return "The request body must be a JSON object.", None
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return "You must provide a model parameter.", None
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or (turns := _turns(messages, None)) is None:
        return "'messages' must be a non-empty array of message objects.", None
    user, tokens = turns
    if user is None:
        return "'messages' must contain a user message with text content.", None
    problem, sampling = _sampling(request, 2.0, ("max_completion_tokens", "max_tokens"), 1)
    if sampling is None:
        return problem, None
    return "", (model, user, *sampling, tokens)


_CHAT_REPLY = (
    b'{"id":"chatcmpl-sim-%d","object":"chat.completion","created":%d,"model":%b,'
    b'"system_fingerprint":"engine-sim","choices":[{"index":0,"message":{"role":"assistant","content":%b},'
    b'"logprobs":null,"finish_reason":"%b"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
    b'"total_tokens":%d}}'
)


def _chat_reply(seq: int, model: str, content: str, cut: bool, prompt: int, completion: int) -> bytes:
    # A template filled in, not a dict dumped: the same bytes as orjson.dumps of the reply object (its
    # strings are dumped by orjson), in two thirds of the time; every benchmark waits on this reply.
    return _CHAT_REPLY % (seq, int(time.time()), orjson.dumps(model), orjson.dumps(content),
                          b"length" if cut else b"stop", prompt, completion, prompt + completion)  # fmt: skip


def _chat_empty(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-sim", "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": "engine-sim", "choices": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })  # fmt: skip


def _openai_retry(wait: float) -> bytes:
    return b"Retry-After: %d\r\nretry-after-ms: %d\r\n" % (max(1, math.ceil(wait)), max(1, math.ceil(wait * 1000)))


def _openai_rate_lines(limit: float, remaining: float, reset: float, unit: bytes) -> bytes:
    return b"x-ratelimit-limit-%s: %d\r\nx-ratelimit-remaining-%s: %d\r\nx-ratelimit-reset-%s: %s\r\n" % (
        unit, round(limit), unit, math.floor(remaining + 1e-9), unit, duration(reset).encode())


# -- Responses ----------------------------------------------------------------------------------


def parse_responses(request: Any) -> tuple[str, Ask | None]:
    """Validate a Responses request (``input`` a string or message items, ``instructions``,
    ``max_output_tokens`` at least 16, as the API asks)."""
    if not isinstance(request, dict):
        return "The request body must be a JSON object.", None
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return "You must provide a model parameter.", None
    given = request.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    if not isinstance(items, list) or not items or (turns := _turns(items, "user")) is None:
        return "'input' must be a string or a non-empty array of input items.", None
    user, tokens = turns
    if user is None:
        return "'input' must contain a user message with text content.", None
    instructions = request.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return "Invalid 'instructions': expected a string.", None
    problem, sampling = _sampling(request, 2.0, ("max_output_tokens",), 16)
    if sampling is None:
        return problem, None
    return "", (model, user, *sampling, tokens + _extra_tokens(instructions))


def _responses_reply(seq: int, model: str, content: str, cut: bool, prompt: int, completion: int) -> bytes:
    return orjson.dumps({
        "id": f"resp_sim{seq}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": None, "max_output_tokens": None, "model": model,
        "output": [{"type": "message", "id": f"msg_sim{seq}", "status": "incomplete" if cut else "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": content, "annotations": []}]}],
        "parallel_tool_calls": True, "temperature": None, "tool_choice": "auto", "tools": [], "top_p": None,
        "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": completion,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion},
        "metadata": {},
    })  # fmt: skip


def _responses_empty(model: str) -> bytes:
    return orjson.dumps({
        "id": "resp_sim", "object": "response", "created_at": int(time.time()), "status": "completed",
        "error": None, "incomplete_details": None, "model": model, "output": [], "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], "metadata": {},
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    })  # fmt: skip


# -- Anthropic Messages -------------------------------------------------------------------------

_ANTHROPIC_ERRORS = types.MappingProxyType({
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    502: "api_error", 503: "api_error", 529: "overloaded_error",
})  # fmt: skip


def parse_messages(request: Any) -> tuple[str, Ask | None]:
    """Validate a Messages request: ``max_tokens`` required, ``system`` top-level (a system role in
    ``messages`` is refused, as the API does), temperature 0 to 1."""
    if not isinstance(request, dict):
        return "The request body must be a JSON object.", None
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required", None
    if request.get("max_tokens") is None:
        return "max_tokens: Field required", None
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or (turns := _turns(messages, None)) is None:
        return "messages: at least one message is required", None
    if any(m.get("role") not in ("user", "assistant") for m in messages):
        return 'messages: roles must be "user" or "assistant"; a system prompt goes in the top-level system field', None
    user, tokens = turns
    if user is None:
        return "messages: a user message with text content is required", None
    system = _text_of(request.get("system"))
    problem, sampling = _sampling(request, 1.0, ("max_tokens",), 1)
    if sampling is None:
        return problem, None
    return "", (model, user, *sampling, tokens + _extra_tokens(system))


def _messages_reply(seq: int, model: str, content: str, cut: bool, prompt: int, completion: int) -> bytes:
    return orjson.dumps({
        "id": f"msg_sim{seq}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": content}], "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": completion},
    })  # fmt: skip


def _messages_empty(model: str) -> bytes:
    return orjson.dumps({
        "id": "msg_sim", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
    })  # fmt: skip


def _anthropic_error(status: int, message: str, kind: str, *, keep_alive: bool, code: str | None = None,
                     extra: bytes = b"", delay: float = 0.0) -> Reply:
    """Anthropic's error body: ``{"type": "error", "error": {"type": ..., "message": ...}}``, by status."""
    body = orjson.dumps({"type": "error", "error": {"type": _ANTHROPIC_ERRORS.get(status, "api_error"),
                                                    "message": message}})
    return Reply(status, http_response(status, body, keep_alive=keep_alive, extra=extra), delay=delay,
                 close=not keep_alive)


def _anthropic_retry(wait: float) -> bytes:
    return b"retry-after: %d\r\n" % max(1, math.ceil(wait))  # whole seconds, as Anthropic sends it


def _rfc3339(seconds_from_now: float) -> bytes:
    when = datetime.datetime.fromtimestamp(time.time() + seconds_from_now, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def _anthropic_rate_lines(limit: float, remaining: float, reset: float, unit: bytes) -> bytes:
    left = math.floor(remaining + 1e-9)
    if unit == b"tokens":
        left = round(left, -3)  # Anthropic rounds remaining tokens to the nearest thousand
    return (b"anthropic-ratelimit-%s-limit: %d\r\nanthropic-ratelimit-%s-remaining: %d\r\n"
            b"anthropic-ratelimit-%s-reset: %s\r\n") % (unit, round(limit), unit, left, unit, _rfc3339(reset))


SIM_APIS: Mapping[bytes, SimApi] = types.MappingProxyType({
    b"/v1/chat/completions": SimApi(
        name="chat", parse=parse_chat, reply=_chat_reply, empty=_chat_empty,
        truncated=b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"index": 0, "mess',
        error=error_reply, retry=_openai_retry, rate_lines=_openai_rate_lines, overloaded=503),
    b"/v1/responses": SimApi(
        name="responses", parse=parse_responses, reply=_responses_reply, empty=_responses_empty,
        truncated=b'{"id": "resp_sim", "object": "response", "output": [{"type": "mess',
        error=error_reply, retry=_openai_retry, rate_lines=_openai_rate_lines, overloaded=503),
    b"/v1/messages": SimApi(
        name="anthropic", parse=parse_messages, reply=_messages_reply, empty=_messages_empty,
        truncated=b'{"id": "msg_sim", "type": "message", "content": [{"type": "te',
        error=_anthropic_error, retry=_anthropic_retry, rate_lines=_anthropic_rate_lines, overloaded=529),
})  # fmt: skip
