"""One thin adapter per API: OpenAI Chat Completions, OpenAI Responses, Anthropic Messages.

An adapter is a handful of plain functions on the engine's own transport: build the request
body, read the reply's text and usage (or why it holds no text), and put the provider's
rate-limit headers into the ``x-ratelimit-*`` / ``retry-after`` shape the limiter reads. No
per-request objects beyond the parsed JSON, so an API costs the hot path what Chat Completions
costs. Error bodies need no adapter: OpenAI's ``{"error": {"code", "type", ...}}`` and
Anthropic's ``{"type": "error", "error": {"type": "overloaded_error", ...}}`` both carry an
``error`` object, and the client reads either (see ``engine.endpoint.client``).

The rule every adapter follows: a reply with text is a reply (an empty string included); one
with no text (a refusal, a tool call, a content filter, no content at all) is :class:`NoText`,
naming why; a body that is not the API's reply shape is a string naming the problem (retried).

Usage::

    api = API["anthropic"]
    body = api.body("claude-x", [{"role": "user", "content": "Hi"}], 0.0, 32, None)
    api.parse(reply_bytes)   # ("Hello", (12, 3)) | NoText("no text in reply (...)") | "malformed ..."
"""

from __future__ import annotations

import datetime
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ANTHROPIC_VERSION", "API", "API_NAMES", "Api", "NoText", "Parsed"]

ANTHROPIC_VERSION = "2023-06-01"  # the Messages API version this adapter speaks


@dataclass(frozen=True, slots=True)
class NoText:
    """A well-formed reply with no text in it (content filter, tool call, refusal): the task fails."""

    reason: str


# (reply, (prompt tokens, completion tokens) or None) | NoText | why the body is not a reply
Parsed = tuple[str, tuple[int, int] | None] | NoText | str
Body = Callable[[str, list[dict[str, str]], float, int, Mapping[str, Any] | None], bytes]


@dataclass(frozen=True, slots=True)
class Api:
    """One API: where it is (``path`` under ``base_url``), how to ask it, how to read its answers.

    ``rate_headers`` is None when the provider already speaks ``x-ratelimit-*`` (nothing to translate).
    Usage: ``API["responses"].path  # '/responses'``
    """

    name: str
    path: str
    body: Body
    parse: Callable[[bytes], Parsed]
    auth: Callable[[str], dict[str, str]]
    headers: Mapping[str, str]  # sent with every request, key or not
    rate_headers: Callable[[Mapping[str, str]], Mapping[str, str]] | None
    reserved: frozenset[str]  # request fields the engine sets, which a model's params may not


# -- OpenAI Chat Completions -------------------------------------------------------------------


def _chat_body(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int,
               params: Mapping[str, Any] | None) -> bytes:
    return orjson.dumps({"model": model, "messages": messages, "temperature": temperature,
                         "max_tokens": max_tokens, **(params or {})})


def _parse_chat(body: bytes) -> Parsed:
    """An empty string is a reply (the model said nothing, scored as no answer); a null or absent
    content is no reply at all, and the reason names the finish_reason."""
    try:
        data = orjson.loads(body)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
    except orjson.JSONDecodeError:
        return "malformed completion: body is not JSON"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "malformed completion: no choices[0].message"
    if content is None:
        return NoText(_chat_no_text(choice, message))
    if not isinstance(content, str):
        return "malformed completion: message content is not text"
    usage = data.get("usage")
    try:
        tokens = (int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if usage else None
    except (KeyError, TypeError, ValueError):
        tokens = None
    return content, tokens


def _chat_no_text(choice: Mapping[str, Any], message: Mapping[str, Any]) -> str:
    finish = choice.get("finish_reason")
    parts = [f"finish_reason={finish}" if finish else "no finish_reason given"]
    if message.get("tool_calls") or message.get("function_call"):
        parts.append("a tool call instead of text")
    if refusal := message.get("refusal"):
        parts.append(f"refusal: {str(refusal)[:80]}")
    return f"no text in reply ({', '.join(parts)})"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- OpenAI Responses --------------------------------------------------------------------------


def _split_system(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    """(the system text, or None; the other messages): both other APIs take the system prompt apart."""
    if not messages or messages[0]["role"] != "system":
        return None, messages
    rest = messages[1:]
    system = [m["content"] for m in messages if m["role"] == "system"]
    if len(system) > 1:
        rest = [m for m in rest if m["role"] != "system"]
    return "\n\n".join(system), rest


def _responses_body(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int,
                    params: Mapping[str, Any] | None) -> bytes:
    instructions, rest = _split_system(messages)
    # One user turn goes as a plain string, as the API's own examples send it; more as input items.
    one = len(rest) == 1 and rest[0]["role"] == "user"
    request: dict[str, Any] = {"model": model, "input": rest[0]["content"] if one else rest,
                               "temperature": temperature, "max_output_tokens": max_tokens}
    if instructions is not None:
        request["instructions"] = instructions
    if params:
        request.update(params)
    return orjson.dumps(request)


def _parse_responses(body: bytes) -> Parsed:
    """Text is every ``output_text`` part of the ``message`` items; an ``incomplete`` response with
    text is a reply (cut short, like finish_reason=length), one without text is NoText."""
    try:
        data = orjson.loads(body)
        output = data["output"]
        status = data.get("status")
    except orjson.JSONDecodeError:
        return "malformed response: body is not JSON"
    except (KeyError, TypeError, AttributeError):
        return "malformed response: no output"
    if not isinstance(output, list):
        return "malformed response: output is not a list"
    if status == "failed":
        error = data.get("error") or {}
        return f"response failed: {error.get('code') or error.get('message') or 'no reason given'}"[:160]
    texts: list[str] = []
    refusal: str | None = None
    tool = False
    for item in output:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            for part in item.get("content") or ():
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype == "output_text":
                    if not isinstance(text := part.get("text"), str):
                        return "malformed response: output_text is not text"
                    texts.append(text)
                elif ptype == "refusal":
                    refusal = str(part.get("refusal") or "")
        elif isinstance(kind, str) and kind.endswith("_call"):  # function_call, web_search_call, ...
            tool = True
    if refusal is not None or not texts:
        parts = [f"status={status}" if status else "no status given"]
        if status == "incomplete" and isinstance(details := data.get("incomplete_details"), dict):
            parts[0] += f" ({details.get('reason')})"
        if tool:
            parts.append("a tool call instead of text")
        if refusal is not None:
            parts.append(f"refusal: {refusal[:80]}")
        return NoText(f"no text in reply ({', '.join(parts)})")
    return "".join(texts), _usage(data.get("usage"))


def _usage(usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens of a Responses or Messages ``usage``; cached input counts as input,
    because the limiter's prompt estimate is of the whole prompt."""
    try:
        prompt = int(usage["input_tokens"])
        prompt += int(usage.get("cache_creation_input_tokens") or 0) + int(usage.get("cache_read_input_tokens") or 0)
        return prompt, int(usage["output_tokens"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


# -- Anthropic Messages ------------------------------------------------------------------------


def _anthropic_body(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int,
                    params: Mapping[str, Any] | None) -> bytes:
    system, rest = _split_system(messages)
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": rest, "temperature": temperature}
    if system is not None:
        request["system"] = system
    if params:
        request.update(params)
    return orjson.dumps(request)


def _parse_anthropic(body: bytes) -> Parsed:
    """Text is every ``text`` block of ``content``; ``stop_reason = "refusal"`` is no text whatever
    was written before it (the model stopped itself), and so is a reply of tool calls only."""
    try:
        data = orjson.loads(body)
        content = data["content"]
        stop = data.get("stop_reason")
    except orjson.JSONDecodeError:
        return "malformed message: body is not JSON"
    except (KeyError, TypeError, AttributeError):
        return "malformed message: no content"
    if not isinstance(content, list):
        return "malformed message: content is not a list"
    texts: list[str] = []
    tool = False
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(text := block.get("text"), str):
                return "malformed message: a text block holds no text"
            texts.append(text)
        elif kind in ("tool_use", "server_tool_use"):
            tool = True
    if stop == "refusal" or not texts:
        parts = [f"stop_reason={stop}" if stop else "no stop_reason given"]
        if tool:
            parts.append("a tool call instead of text")
        if not content:
            parts.append("no content blocks")
        return NoText(f"no text in reply ({', '.join(parts)})")
    return "".join(texts), _usage(data.get("usage"))


def _anthropic_auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


_ANTHROPIC_KINDS = (("requests", ("requests",)), ("tokens", ("tokens", "input-tokens")))


def _anthropic_rate_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``anthropic-ratelimit-*`` as the limiter reads OpenAI's: the limits (per minute, as both send
    them), remaining, and resets turned from RFC 3339 times into seconds from now. ``retry-after``
    is passed through. Tokens: the combined ``tokens`` limit, else the input-token one (the part the
    limiter estimates before sending)."""
    out: dict[str, str] = {}
    if (after := headers.get("retry-after")) is not None:
        out["retry-after"] = after
    for kind, sources in _ANTHROPIC_KINDS:
        for source in sources:
            prefix = f"anthropic-ratelimit-{source}-"
            if (limit := headers.get(prefix + "limit")) is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = limit
            if (remaining := headers.get(prefix + "remaining")) is not None:
                out[f"x-ratelimit-remaining-{kind}"] = remaining
            if (reset := headers.get(prefix + "reset")) is not None and (seconds := _seconds_until(reset)) is not None:
                out[f"x-ratelimit-reset-{kind}"] = f"{seconds:.3f}"
            break
    return out


def _seconds_until(rfc3339: str) -> float | None:
    """Seconds from now (wall clock) to an RFC 3339 time, never negative; None when unreadable."""
    try:
        when = datetime.datetime.fromisoformat(rfc3339.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


_OPENAI_RESERVED = frozenset({"model", "temperature", "stream"})

API: Mapping[str, Api] = types.MappingProxyType({
    "chat": Api(name="chat", path="/chat/completions", body=_chat_body, parse=_parse_chat, auth=_bearer, headers={},
                rate_headers=None, reserved=_OPENAI_RESERVED | {"messages", "max_tokens"}),
    "responses": Api(name="responses", path="/responses", body=_responses_body, parse=_parse_responses,
                     auth=_bearer, headers={}, rate_headers=None,
                     reserved=_OPENAI_RESERVED | {"input", "instructions", "max_output_tokens"}),
    "anthropic": Api(name="anthropic", path="/messages", body=_anthropic_body, parse=_parse_anthropic,
                     auth=_anthropic_auth, headers={"anthropic-version": ANTHROPIC_VERSION},
                     rate_headers=_anthropic_rate_headers,
                     reserved=_OPENAI_RESERVED | {"messages", "system", "max_tokens"}),
})  # fmt: skip
API_NAMES = tuple(API)
