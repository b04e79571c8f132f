"""The client against httpx.MockTransport on a virtual clock: retries, waits, fatal errors, secrets."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import anyio
import httpx
import orjson
import pytest

from engine.endpoint.client import ChatClient, Completion
from engine.endpoint.httpx_transport import HttpxTransport
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.errors import EndpointError, QuotaExhausted
from tests.support.vtime import run_virtual

SECRET = "sk-test-SECRET-4242"


def completion_body(text: str = "Apple is 65451.") -> bytes:
    return orjson.dumps(
        {"choices": [{"message": {"role": "assistant", "content": text}}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 5}}
    )


def run_client(
    responses: Sequence[httpx.Response | Exception], *, policy: RetryPolicy | None = None, api_key: str | None = None,
    limits: LimitConfig | None = None, base_url: str = "http://provider.test/v1",
    on_send: Callable[[], None] | None = None, pause_s: float = 0.0,
) -> tuple[Completion, list[httpx.Request], list[float]]:
    """Send one task; the mock answers with ``responses`` in order. Returns result, requests and send times.

    ``pause_s`` starts the endpoint paused that long, as after a 429 of another task.
    """
    requests: list[httpx.Request] = []
    times: list[float] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        times.append(anyio.current_time())
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def main() -> Completion:
        transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        limiter = EndpointLimiter(limits or LimitConfig(concurrency=4))
        if pause_s:
            limiter.paused_until = anyio.current_time() + pause_s
        client = ChatClient(
            base_url=base_url, api_key=api_key, transport=transport, limiter=limiter,
            policy=policy or RetryPolicy(), rng=random.Random(1),
        )
        return await client.complete(
            model="m", messages=[{"role": "user", "content": "What is the number for Apple?"}],
            temperature=0.0, max_tokens=16, on_send=on_send,
        )

    result = run_virtual(main)
    return result, requests, times


def test_success_reads_reply_and_usage() -> None:
    result, requests, _ = run_client([httpx.Response(200, content=completion_body())])
    assert result.ok and result.reply == "Apple is 65451."
    assert (result.prompt_tokens, result.completion_tokens) == (12, 5)
    assert result.attempts == 1 and result.http == [200]
    body = orjson.loads(requests[0].content)
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["max_tokens"] == 16
    assert requests[0].url.path == "/v1/chat/completions"


def test_429_waits_exactly_as_long_as_retry_after_asks() -> None:
    result, _, times = run_client([
        httpx.Response(429, headers={"retry-after": "7"}, json={"error": {"code": "rate_limit_exceeded"}}),
        httpx.Response(200, content=completion_body()),
    ])
    assert result.ok and result.http == [429, 200] and result.attempts == 2
    assert times[1] - times[0] == pytest.approx(7.0, abs=0.05)


def test_retry_after_ms_is_preferred() -> None:
    result, _, times = run_client([
        httpx.Response(429, headers={"retry-after-ms": "250", "retry-after": "1"}),
        httpx.Response(200, content=completion_body()),
    ])
    assert result.ok
    assert times[1] - times[0] == pytest.approx(0.25, abs=0.01)


def test_a_huge_retry_after_is_capped() -> None:
    result, _, times = run_client(
        [httpx.Response(429, headers={"retry-after": "86400"}), httpx.Response(200, content=completion_body())],
        policy=RetryPolicy(max_wait_s=60), limits=LimitConfig(max_pause_s=60),
    )
    assert result.ok
    assert times[1] - times[0] == pytest.approx(60.0, abs=0.05)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_transient_statuses_are_retried_with_growing_capped_backoff(status: int) -> None:
    policy = RetryPolicy(max_attempts=5, base_s=1.0, cap_s=4.0)
    result, _, times = run_client([httpx.Response(status)] * 4 + [httpx.Response(200, content=completion_body())],
                                  policy=policy)
    assert result.ok and result.attempts == 5 and result.http == [status] * 4 + [200]
    waits = [b - a for a, b in itertools.pairwise(times)]
    for attempt, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(4.0, 2 ** (attempt - 1)) + 0.01  # full jitter under the capped exponential


def test_exhausted_budget_returns_failed_with_reason_not_an_exception() -> None:
    result, requests, _ = run_client([httpx.Response(500)] * 3, policy=RetryPolicy(max_attempts=3))
    assert not result.ok and result.reply is None
    assert len(requests) == 3 and result.attempts == 3
    assert result.error is not None and "http 500" in result.error and "3 attempts" in result.error


def test_connection_errors_and_timeouts_are_retried() -> None:
    result, _, _ = run_client([
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(200, content=completion_body()),
    ])
    assert result.ok and result.attempts == 4 and result.http == [200]


@pytest.mark.parametrize("body", [b"not json", b'{"choices": []}', b'{"choices": [{"message": null}]}', b"{}"])
def test_a_200_that_is_not_a_completion_is_retried(body: bytes) -> None:
    result, _, _ = run_client([httpx.Response(200, content=body), httpx.Response(200, content=completion_body())])
    assert result.ok and result.http == [200, 200]


def test_malformed_every_time_fails_with_the_reason() -> None:
    result, _, _ = run_client([httpx.Response(200, content=b"<html>")] * 2, policy=RetryPolicy(max_attempts=2))
    assert not result.ok and result.error is not None and "malformed completion" in result.error


def test_400_fails_the_task_without_retrying() -> None:
    result, requests, _ = run_client([httpx.Response(400, json={"error": {"message": "context too long"}})])
    assert not result.ok and len(requests) == 1 and "400" in (result.error or "")


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_stops_the_run_and_never_shows_the_key(status: int) -> None:
    with pytest.raises(EndpointError) as info:
        run_client([httpx.Response(status, json={"error": {"message": f"bad key {SECRET}"}})], api_key=SECRET)
    assert SECRET not in str(info.value)
    assert "refused the API key" in str(info.value)


def test_404_html_says_not_openai_compatible() -> None:
    with pytest.raises(EndpointError, match="OpenAI-compatible"):
        run_client([httpx.Response(404, content=b"<html>Not Found</html>")])


def test_insufficient_quota_fails_fast() -> None:
    with pytest.raises(QuotaExhausted):
        run_client([httpx.Response(429, json={"error": {"code": "insufficient_quota", "message": "x"}})])


def test_key_is_sent_as_bearer_and_redirects_are_not_followed() -> None:
    result, requests, _ = run_client(
        [httpx.Response(307, headers={"location": "http://elsewhere.test/v1/chat/completions"})], api_key=SECRET,
    )
    assert requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert len(requests) == 1 and all(r.url.host == "provider.test" for r in requests)
    assert not result.ok and SECRET not in (result.error or "")


def test_a_completion_without_usage_is_still_a_reply() -> None:
    body = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "Apple is 65451."}}]})
    result, _, _ = run_client([httpx.Response(200, content=body)])
    assert result.ok and result.reply == "Apple is 65451."
    assert result.prompt_tokens is None and result.completion_tokens is None


def test_unknown_model_stops_the_run_naming_the_model() -> None:
    with pytest.raises(EndpointError, match="model 'm' served there"):
        run_client([httpx.Response(404, json={"error": {"code": "model_not_found", "message": "no such model"}})])


def test_an_error_body_echoing_the_key_is_redacted_in_the_logged_reason() -> None:
    result, _, _ = run_client(
        [httpx.Response(400, json={"error": {"message": f"bad request from key {SECRET}"}})], api_key=SECRET
    )
    assert not result.ok and result.error is not None
    assert SECRET not in result.error and "[api key]" in result.error


def test_on_send_runs_once_per_attempt_only_when_it_really_goes_out() -> None:
    # The write-ahead journal hangs on on_send: a task waiting out a pause has sent nothing yet,
    # and each retry is one more request paid for.
    sent: list[float] = []
    result, requests, times = run_client(
        [httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(200, content=completion_body())],
        on_send=lambda: sent.append(anyio.current_time()), pause_s=30.0,
    )
    assert result.ok and len(requests) == 3
    assert sent == times  # one call per attempt, at the moment each went out
    assert times[0] >= 1000.0 + 30.0  # not before the limiter let it through


@pytest.mark.parametrize(
    ("message", "finish", "reason"),
    [
        ({"role": "assistant", "content": None}, "content_filter", "no text in reply (finish_reason=content_filter)"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}, "tool_calls",
         "no text in reply (finish_reason=tool_calls, a tool call instead of text)"),
        ({"role": "assistant", "content": None, "refusal": "I can't help with that."}, "stop",
         "no text in reply (finish_reason=stop, refusal: I can't help with that.)"),
        ({"role": "assistant"}, None, "no text in reply (no finish_reason given)"),
    ],
)
def test_a_completion_without_text_fails_the_task_at_once_with_its_reason(
    message: dict[str, object], finish: str | None, reason: str
) -> None:
    body = orjson.dumps({"choices": [{"message": message, "finish_reason": finish}],
                         "usage": {"prompt_tokens": 12, "completion_tokens": 0}})
    result, requests, _ = run_client([httpx.Response(200, content=body)] * 3)
    assert not result.ok and result.reply is None  # a failed task, not a wrong answer of the model's
    assert len(requests) == 1 and result.http == [200]  # asking again would get the same: not retried
    assert result.error == f"{reason} (after 1 attempt)"


def test_an_empty_string_reply_is_still_a_reply() -> None:
    body = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]})
    result, requests, _ = run_client([httpx.Response(200, content=body)])
    assert result.ok and result.reply == "" and len(requests) == 1


@pytest.mark.parametrize(
    ("base_url", "hint"),
    [("http://provider.test", "did you mean http://provider.test/v1?"),
     ("http://provider.test/api", "did you mean http://provider.test/api/v1?"),
     ("http://provider.test/v1", None), ("http://provider.test/openai/v1beta", None)],
)
def test_a_404_from_a_base_url_without_a_version_suggests_v1(base_url: str, hint: str | None) -> None:
    for response in (httpx.Response(404, content=b"<html>Not Found</html>"),
                     httpx.Response(404, json={"detail": "Not Found"}),
                     httpx.Response(404, json={"error": {"code": "model_not_found"}})):
        with pytest.raises(EndpointError) as info:
            run_client([response], base_url=base_url)
        message = str(info.value)
        assert "\n" not in message
        if hint is None:
            assert "did you mean" not in message, message
        else:
            assert message.endswith(hint) or message.endswith(f"{hint})"), message
