"""The three API adapters: request bodies, reply text and usage, no-text replies, headers, errors."""

from __future__ import annotations

import datetime
import random
import time
from typing import Any

import anyio
import httpx
import orjson
import pytest

from engine.endpoint.apis import API, NoText
from engine.endpoint.client import ChatClient, Completion
from engine.endpoint.httpx_transport import HttpxTransport
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.errors import EndpointError
from tests.support.vtime import run_virtual

MESSAGES = [{"role": "system", "content": "Answer with the number."}, {"role": "user", "content": "Apple?"}]


def body(api: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(API[api].body("m", MESSAGES, 0.5, 32, params))
    return data


def test_each_api_builds_its_own_request() -> None:
    assert body("chat") == {"model": "m", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 32}
    assert body("responses") == {"model": "m", "input": "Apple?", "instructions": "Answer with the number.",
                                 "temperature": 0.5, "max_output_tokens": 32}
    # Anthropic: max_tokens always, the system prompt top-level, only user/assistant turns in messages.
    assert body("anthropic") == {"model": "m", "max_tokens": 32, "system": "Answer with the number.",
                                 "messages": [{"role": "user", "content": "Apple?"}], "temperature": 0.5}
    assert body("anthropic", {"top_k": 5})["top_k"] == 5
    no_system = orjson.loads(API["responses"].body("m", MESSAGES[1:], 0.0, 16, None))
    assert "instructions" not in no_system and no_system["input"] == "Apple?"
    turns = [*MESSAGES, {"role": "assistant", "content": "1"}, {"role": "user", "content": "Pear?"}]
    assert orjson.loads(API["responses"].body("m", turns, 0.0, 16, None))["input"] == turns[1:]


def test_each_api_reads_text_and_usage() -> None:
    chat = {"choices": [{"message": {"content": "65451"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    responses = {"status": "completed", "output": [
        {"type": "reasoning", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "654"}, {"type": "output_text", "text": "51"}]},
    ], "usage": {"input_tokens": 9, "output_tokens": 3}}
    anthropic = {"type": "message", "content": [{"type": "text", "text": "65451"}], "stop_reason": "end_turn",
                 "usage": {"input_tokens": 5, "cache_read_input_tokens": 4, "output_tokens": 3}}
    for api, reply in (("chat", chat), ("responses", responses), ("anthropic", anthropic)):
        assert API[api].parse(orjson.dumps(reply)) == ("65451", (9, 3)), api
    # Cut short at the token limit is still a reply, in each API.
    cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
           "output": [{"type": "message", "content": [{"type": "output_text", "text": "6545"}]}]}
    assert API["responses"].parse(orjson.dumps(cut)) == ("6545", None)
    assert API["anthropic"].parse(orjson.dumps({"content": [{"type": "text", "text": ""}],
                                                "stop_reason": "max_tokens"})) == ("", None)


@pytest.mark.parametrize(("api", "reply", "reason"), [
    ("responses", {"status": "completed", "output": [{"type": "message", "content": [
        {"type": "refusal", "refusal": "I can't help with that."}]}]},
     "no text in reply (status=completed, refusal: I can't help with that.)"),
    ("responses", {"status": "completed", "output": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "no text in reply (status=completed, a tool call instead of text)"),
    ("responses", {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}, "output": []},
     "no text in reply (status=incomplete (content_filter))"),
    ("anthropic", {"content": [], "stop_reason": "end_turn"},
     "no text in reply (stop_reason=end_turn, no content blocks)"),
    ("anthropic", {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use"},
     "no text in reply (stop_reason=tool_use, a tool call instead of text)"),
    ("anthropic", {"content": [{"type": "text", "text": "I won't"}], "stop_reason": "refusal"},
     "no text in reply (stop_reason=refusal)"),
])  # fmt: skip
def test_a_reply_with_no_text_names_why(api: str, reply: dict[str, Any], reason: str) -> None:
    assert API[api].parse(orjson.dumps(reply)) == NoText(reason)


@pytest.mark.parametrize("api", ["chat", "responses", "anthropic"])
def test_a_body_that_is_not_a_reply_is_malformed(api: str) -> None:
    for raw in (b"{not json", b"{}", b'{"choices": 1, "output": 1, "content": 1}'):
        parsed = API[api].parse(raw)
        assert isinstance(parsed, str) and parsed.startswith("malformed"), (api, raw)


def test_anthropic_rate_limit_headers_become_the_limiters() -> None:
    reset = datetime.datetime.fromtimestamp(time.time() + 2.5, datetime.UTC).isoformat().replace("+00:00", "Z")
    translate = API["anthropic"].rate_headers
    assert translate is not None and API["chat"].rate_headers is None and API["responses"].rate_headers is None
    out = translate({
        "retry-after": "3", "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset, "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000", "anthropic-ratelimit-input-tokens-reset": "garbage",
    })
    assert out["retry-after"] == "3" and out["x-ratelimit-limit-requests"] == "50"
    assert out["x-ratelimit-remaining-requests"] == "0"
    assert 2.0 <= float(out["x-ratelimit-reset-requests"]) <= 2.5
    assert out["x-ratelimit-limit-tokens"] == "40000" and "x-ratelimit-reset-tokens" not in out  # unreadable: left out
    assert translate({}) == {}


def run_one(api: str, responses: list[httpx.Response], key: str | None = "sk-ant-SECRET") -> tuple[
        Completion, list[httpx.Request], list[float]]:
    requests: list[httpx.Request] = []
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        times.append(anyio.current_time())
        return responses.pop(0)

    async def main() -> Completion:
        transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        client = ChatClient(base_url="http://provider.test/v1", api_key=key, transport=transport,
                            limiter=EndpointLimiter(LimitConfig(concurrency=4)), policy=RetryPolicy(),
                            rng=random.Random(1))
        return await client.complete(model="m", messages=MESSAGES, temperature=0.0, max_tokens=32, api=api)

    return run_virtual(main), requests, times


def anthropic_error(status: int, kind: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"type": "error", "error": {"type": kind, "message": "..."}}, headers=headers)


def test_anthropic_529_and_429_wait_as_asked_then_answer() -> None:
    ok = httpx.Response(200, json={"content": [{"type": "text", "text": "65451"}], "stop_reason": "end_turn",
                                   "usage": {"input_tokens": 9, "output_tokens": 3}})
    result, requests, times = run_one("anthropic", [
        anthropic_error(529, "overloaded_error", {"retry-after": "2"}),
        anthropic_error(429, "rate_limit_error", {"retry-after": "3"}),
        ok,
    ])
    assert result.ok and result.reply == "65451" and result.http == [529, 429, 200]
    assert (result.prompt_tokens, result.completion_tokens) == (9, 3)
    assert times[1] - times[0] == pytest.approx(2, abs=0.01) and times[2] - times[1] == pytest.approx(3, abs=0.01)
    assert all(str(r.url) == "http://provider.test/v1/messages" for r in requests)
    assert requests[0].headers["anthropic-version"] == "2023-06-01" and "authorization" not in requests[0].headers


def test_anthropic_errors_are_read_from_their_own_shape() -> None:
    result, _, _ = run_one("anthropic", [anthropic_error(400, "invalid_request_error")])
    assert not result.ok and result.error == "http 400 invalid_request_error (after 1 attempt)"
    with pytest.raises(EndpointError, match="refused the API key") as caught:
        run_one("anthropic", [anthropic_error(401, "authentication_error")])
    assert "SECRET" not in str(caught.value)
    with pytest.raises(EndpointError, match="is base_url an Anthropic Messages /v1 endpoint"):
        run_one("anthropic", [httpx.Response(404, text="<html>no</html>")])


def test_a_responses_refusal_fails_the_task_without_a_retry() -> None:
    refusal = {"status": "completed", "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}]}
    result, requests, _ = run_one("responses", [httpx.Response(200, json=refusal)], key="sk-x")
    assert not result.ok and result.attempts == 1
    assert result.error == "no text in reply (status=completed, refusal: No.) (after 1 attempt)"
    assert str(requests[0].url) == "http://provider.test/v1/responses"
    assert requests[0].headers["authorization"] == "Bearer sk-x"
