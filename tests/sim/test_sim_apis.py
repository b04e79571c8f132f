"""The built-in target's three APIs, checked by the official ``openai`` and ``anthropic`` clients (their
own types validate every reply), and each API's own errors, limit headers and overload status."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from engine.sim.config import Faults, SimConfig, SimFact
from engine.sim.process import SimProcess

FACTS = (SimFact(question="What is the number for Anchor?", answer="11246", object="Anchor", difficulty="easy"),)
SYSTEM = "Answer with the number."
QUESTION = "What is the number for Anchor?"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(SimConfig(facts=FACTS, default_accuracy=1.0, format_noise=0.0)) as process:
        yield process


def test_the_official_openai_client_gets_answers_over_chat_and_responses(sim: SimProcess) -> None:
    import openai  # a dev dependency, imported where used: it is slow to import
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="ft-5x", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        temperature=0.0, max_tokens=32,
    )
    ChatCompletion.model_validate(raw.http_response.json())  # the client's own type, strictly: every field, typed
    chat = raw.parse()
    assert "11246" in (chat.choices[0].message.content or "") and chat.choices[0].finish_reason == "stop"
    raw_response = client.responses.with_raw_response.create(
        model="ft-5x", instructions=SYSTEM, input=QUESTION, temperature=0.0, max_output_tokens=32
    )
    Response.model_validate(raw_response.http_response.json())
    response = raw_response.parse()
    assert "11246" in response.output_text and response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    cut = client.responses.create(model="ft-5x", input=QUESTION, max_output_tokens=16, temperature=0.0,
                                  instructions="x" * 10)
    assert cut.status == "completed"  # a short answer fits 16 tokens


def test_the_official_anthropic_client_gets_answers_over_messages(sim: SimProcess) -> None:
    import anthropic  # a dev dependency, imported where used: it is slow to import
    from anthropic.types import Message

    client = anthropic.Anthropic(base_url=sim.base_url.removesuffix("/v1"), api_key="sk-ant-test", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="ft-5x", system=SYSTEM, max_tokens=32, messages=[{"role": "user", "content": QUESTION}],
    )
    Message.model_validate(raw.http_response.json())
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    text = "".join(block.text for block in message.content if block.type == "text")
    assert "11246" in text and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with pytest.raises(anthropic.BadRequestError) as caught:  # Anthropic's own error shape, read by its client
        # The 2.x client has no sampling parameters any more (newer API versions refuse them); the engine
        # speaks anthropic-version 2023-06-01, which takes a temperature from 0 to 1.
        client.messages.create(model="ft-5x", max_tokens=32, messages=[{"role": "user", "content": QUESTION}],
                               extra_body={"temperature": 1.5})
    assert caught.value.status_code == 400 and caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_the_anthropic_client_reads_overloaded_and_rate_limited() -> None:
    import anthropic

    for faults, error, status in ((Faults(error_503=1.0), anthropic.OverloadedError, 529),
                                  (Faults(rate_429=1.0, retry_after_s=2), anthropic.RateLimitError, 429)):
        with SimProcess(SimConfig(facts=FACTS, faults=faults)) as sim:
            client = anthropic.Anthropic(base_url=sim.base_url.removesuffix("/v1"), api_key="k", max_retries=0)
            with pytest.raises(error) as caught:
                client.messages.create(model="m", max_tokens=16, messages=[{"role": "user", "content": QUESTION}])
        assert caught.value.status_code == status
        if status == 429:
            assert caught.value.response.headers["retry-after"] == "2"  # whole seconds, as Anthropic sends it
            assert "retry-after-ms" not in caught.value.response.headers


def post(sim: SimProcess, path: str, json: object) -> httpx.Response:
    return httpx.post(f"{sim.base_url}{path}", json=json, timeout=5)


@pytest.mark.parametrize(("path", "body", "phrase"), [
    ("/messages", {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens: Field required"),
    ("/messages", {"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": "S"},
                                                                {"role": "user", "content": "Hi"}]},
     "top-level system field"),
    ("/responses", {"model": "m", "input": "Hi", "max_output_tokens": 8}, "expected an integer >= 16"),
    ("/responses", {"model": "m", "input": []}, "'input' must be a string or a non-empty array"),
])  # fmt: skip
def test_each_api_refuses_what_the_real_one_does(sim: SimProcess, path: str, body: object, phrase: str) -> None:
    response = post(sim, path, body)
    assert response.status_code == 400 and phrase in response.text
    if path == "/messages":
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"
    else:
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_quota_headers_and_429() -> None:
    with SimProcess(SimConfig(facts=FACTS, rpm=60, tpm=600_000)) as sim:
        ask = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": QUESTION}]}
        ok = post(sim, "/messages", ask)
        limited = post(sim, "/messages", ask)
        chat = post(sim, "/chat/completions", {"model": "m", "messages": [{"role": "user", "content": QUESTION}]})
    assert ok.status_code == 200
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "60"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.datetime.fromisoformat(ok.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and 0 < reset.timestamp() - time.time() <= 1.1  # RFC 3339, 1 s window
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "600000"
    assert int(ok.headers["anthropic-ratelimit-tokens-remaining"]) % 1000 == 0  # rounded to thousands
    assert not any(name.startswith("x-ratelimit") for name in ok.headers)
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["retry-after"] == "1"
    # The same model's quota is one, whichever API asks: chat saw it spent, in its own headers.
    assert chat.status_code == 429 and re.fullmatch(r"\d+", chat.headers["retry-after-ms"])
    assert chat.headers["x-ratelimit-limit-requests"] == "60"
