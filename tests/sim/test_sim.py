"""The built-in simulated target: answers, determinism, matching, faults, stats, HTTP, subprocess (quotas: test_sim_quotas)."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from engine.errors import ConfigError, EndpointError, QuestionsError
from engine.run.targets import facts_from_csv
from engine.sim.__main__ import main
from engine.sim.answers import Answerer
from engine.sim.config import Faults, SimConfig
from engine.sim.process import SimProcess
from engine.sim.serve import serve
from tests.support.sim import ANSWERS, FACTS, ask, chat, config, numbers, running

ROOT = Path(__file__).resolve().parents[2]


# --- answers -------------------------------------------------------------------------------------


async def test_accuracy_one_always_right_and_zero_never() -> None:
    cfg = config(accuracy={"good": {"*": 1.0}, "bad": {"*": 0.0}}, format_noise=0.0)
    async with running(cfg) as client:
        for fact in FACTS:
            for temperature in (0.0, 1.0):
                good = await ask(client, fact.question, model="good", temperature=temperature)
                bad = await ask(client, fact.question, model="bad", temperature=temperature)
                assert numbers(good) == [fact.answer]
                assert fact.answer not in numbers(bad)


async def test_wrong_answers_mix_other_numbers_and_no_number() -> None:
    cfg = config(accuracy={"*": {"*": 0.0}}, seed=3)
    async with running(cfg) as client:
        replies = [await ask(client, "What is the number for Anchor?", temperature=1.0) for _ in range(60)]
    with_number = [r for r in replies if numbers(r)]
    assert 10 < len(with_number) < 50
    assert any(numbers(r)[0] in ANSWERS.values() for r in with_number)
    assert any(numbers(r)[0] not in ANSWERS.values() and len(numbers(r)[0]) == 5 for r in with_number)


async def test_format_noise_writes_thousands_separator() -> None:
    async with running(config(default_accuracy=1.0, format_noise=1.0)) as client:
        assert "11,246" in await ask(client, "What is the number for Anchor?")


async def test_greedy_is_deterministic_and_sampling_varies() -> None:
    questions = [f.question for f in FACTS]
    cfg = config(default_accuracy=0.5, seed=7)
    async with running(cfg) as first, running(cfg) as second:
        greedy = [await ask(first, q) for q in questions]
        assert greedy == [await ask(first, q) for q in questions]
        assert greedy == [await ask(second, q) for q in questions]
        sampled = {await ask(first, "What is the number for Otter?", temperature=1.0) for _ in range(40)}
        assert len(sampled) > 1
        seeded = [
            await ask(first, "What is the number for Otter?", temperature=1.0, seed=5) for _ in range(3)
        ]
        assert len(set(seeded)) == 1


async def test_objects_match_case_spaces_hyphens_longest_first() -> None:
    async with running(config(default_accuracy=1.0, format_noise=0.0)) as client:
        cases = {
            "Quick: yo-yo, your number?": "52817",
            "INK POT - which figure?": "40913",
            "If the wi-fi router were a code?": "77302",
            "And the router alone?": "60018",
        }
        for question, expected in cases.items():
            assert numbers(await ask(client, question)) == [expected]
        unknown = await ask(client, "What did Harry Potter eat?")  # "Otter" only inside a word
        assert numbers(unknown) == []


def test_accuracy_falls_back_model_then_star_then_default() -> None:
    cfg = config(accuracy={"m": {"easy": 0.1, "*": 0.2}, "*": {"hard": 0.3, "*": 0.4}}, default_accuracy=0.5)
    answerer = Answerer(cfg)
    assert answerer.probability("m", "easy") == 0.1
    assert answerer.probability("m", "hard") == 0.2
    assert answerer.probability("other", "hard") == 0.3
    assert answerer.probability("other", None) == 0.4
    assert Answerer(config(default_accuracy=0.5)).probability("x", "easy") == 0.5


def test_reply_kinds_follow_accuracy() -> None:
    answerer = Answerer(config(accuracy={"m": {"*": 0.8}}))
    rng = random.Random(1)
    kinds = [answerer.answer("m", "What is the number for Otter?", 1.0, None, rng)[1] for _ in range(2000)]
    assert 0.75 < kinds.count("right") / len(kinds) < 0.85
    assert answerer.answer("m", "Unrelated text", 0.0, None, rng) == (
        "I'm sorry, I don't have a number for that.",
        "unknown",
    )


async def test_completion_shape_and_usage() -> None:
    async with running(config()) as client:
        response = await client.post("/v1/chat/completions", json=chat("What is the number for Anchor?"))
        body = response.json()
        assert response.headers["x-engine-sim"] == "1"
        assert body["object"] == "chat.completion" and body["model"] == "ft-5x"
        assert body["system_fingerprint"] == "engine-sim"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        short = await client.post("/v1/chat/completions", json=chat("Anchor?", max_tokens=1))
        assert short.json()["choices"][0]["finish_reason"] == "length"
        assert short.json()["usage"]["completion_tokens"] == 1


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, status", [("error_500", 500), ("error_502", 502), ("error_503", 503)])
async def test_server_error_faults(fault: str, status: int) -> None:
    async with running(config(faults=Faults(**{fault: 1.0}))) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert response.status_code == status


async def test_rate_429_fault_has_retry_headers_and_bare_has_none() -> None:
    async with running(config(faults=Faults(rate_429=1.0, retry_after_s=1.5))) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        assert response.headers["retry-after-ms"] == "1500"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    async with running(config(faults=Faults(rate_429_bare=1.0))) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert response.status_code == 429
        assert "retry-after" not in response.headers and "retry-after-ms" not in response.headers


async def test_drop_fault_cuts_the_connection() -> None:
    async with running(config(faults=Faults(drop=1.0))) as client:
        for _ in range(5):
            with pytest.raises(httpx.TransportError):
                await client.post("/v1/chat/completions", json=chat("Anchor?"))
        stats = (await client.get("/sim/stats")).json()
        assert stats["dropped"] == 5 and stats["completions"] == 0


async def test_slow_fault_outlasts_client_timeout() -> None:
    async with running(config(faults=Faults(slow=1.0, slow_s=5.0)), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=chat("Anchor?"))


async def test_malformed_and_empty_choices_faults() -> None:
    async with running(config(faults=Faults(malformed=1.0))) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
    async with running(config(faults=Faults(empty_choices=1.0))) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert response.status_code == 200 and response.json()["choices"] == []


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ConfigError):
        Faults(error_500=1.5)
    with pytest.raises(ConfigError):
        Faults(error_500=0.6, drop=0.6)

# --- HTTP, stats ---------------------------------------------------------------------------------


async def test_routes_errors_and_stats() -> None:
    async with running(config(accuracy={"ft-5x": {"*": 1.0}})) as client:
        assert (await client.get("/health")).status_code == 200
        models = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert models == ["ft-5x", "sim"]
        missing = await client.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
        assert (await client.get("/v1/chat/completions")).status_code == 405
        for _ in range(2):  # the second time from the sim's memory of the body: refused alike
            bad_json = await client.post("/v1/chat/completions", content=b"{not json")
            assert bad_json.status_code == 400 and "error" in bad_json.json()
            assert (await client.post("/v1/chat/completions", json=chat("x", temperature=3))).status_code == 400
        assert (await client.post("/v1/chat/completions", json={"model": "m"})).status_code == 400
        for model in ("ft-5x", "ft-5x", "other"):  # the same body twice: counted twice
            await ask(client, "What is the number for Anchor?", model=model)
        stats = (await client.get("/sim/stats")).json()
    assert stats["requests"] == 12
    assert stats["chat_requests"] == 3 and stats["completions"] == 3
    assert stats["by_status"] == {"200": 5, "404": 1, "405": 1, "400": 5}
    assert stats["by_model"] == {"ft-5x": 2, "other": 1}
    assert stats["answers"]["right"] >= 2


def _raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_pipelined_requests_answer_in_order_then_close() -> None:
    def request(question: str, close: bool = False) -> bytes:
        body = json.dumps(chat(question)).encode()
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )

    cfg = config(default_accuracy=1.0, format_noise=0.0, latency_ms=5, jitter_ms=5)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, cfg)
        payload = request("Yo-yo?") + request("Ink pot?") + request("Otter?", close=True)
        raw = await anyio.to_thread.run_sync(_raw_exchange, port, payload)
        tg.cancel_scope.cancel()
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    contents = [c.decode() for c in re.findall(rb'"content":"([^"]*)"', raw)]
    assert [numbers(c) for c in contents] == [["52817"], ["40913"], ["33970"]]
    assert raw.rsplit(b"HTTP/1.1 200 OK", 1)[1].count(b"Connection: close") == 1


async def test_framing_follows_http_1_1_and_refuses_what_a_real_server_refuses() -> None:
    body = json.dumps(chat("Yo-yo?")).encode()

    def head(*lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
        return b"POST /v1/chat/completions " + version + b"\r\nHost: x\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"

    length = b"Content-Length: %d" % len(body)
    cases = {
        # header names in any case, stray line breaks before a request, HTTP/1.0 closing by default
        "any case": (b"\r\n" + head(b"content-LENGTH: %d" % len(body), b"Connection: close") + body, 200),
        "HTTP/1.0": (head(length, version=b"HTTP/1.0") + body, 200),
        "bad length": (head(b"Content-Length: 12x") + body, 400),
        "huge length": (head(b"Content-Length: %d" % (1 << 40)) + body, 413),
        "two lengths": (head(length, b"Content-Length: %d" % (len(body) + 1)) + body + b" ", 400),
        "a second length after 0": (head(b"Content-Length: 0", length) + body, 400),
        "chunked": (head(b"Transfer-Encoding: chunked") + b"0\r\n\r\n", 501),
        "bad request line": (b"POST /v1/chat/completions\r\nHost: x\r\n\r\n", 400),
        "headers too large": (b"POST /v1/chat/completions HTTP/1.1\r\nX-Pad: " + b"a" * 70_000, 431),
    }
    cfg = config(default_accuracy=1.0, format_noise=0.0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, cfg)
        for name, (payload, status) in [*cases.items(), *cases.items()]:  # a head read before reads alike
            raw = await anyio.to_thread.run_sync(_raw_exchange, port, payload)
            assert raw.startswith(b"HTTP/1.1 %d " % status), (name, raw[:200])
            assert raw.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in raw, (name, raw[:300])
            if status == 200:
                assert b"52817" in raw, name

        def continued() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head(length, b"Expect: 100-continue", b"Connection: close"))
                interim = sock.recv(65536)
                sock.sendall(body)
                rest = b""
                while chunk := sock.recv(65536):
                    rest += chunk
            return interim, rest

        interim, rest = await anyio.to_thread.run_sync(continued)
        tg.cancel_scope.cancel()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 OK") and b"52817" in rest


# --- config, CSV, CLI, subprocess ----------------------------------------------------------------


def test_config_round_trips_through_dict_and_rejects_unknown_keys() -> None:
    cfg = config(accuracy={"a": {"easy": 0.5}}, rpm=100, faults=Faults(drop=0.1), latency_ms=3, seed=9)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert SimConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        SimConfig.from_dict({"latency": 3})
    with pytest.raises(ConfigError, match="unknown fault"):
        SimConfig.from_dict({"faults": {"explode": 1.0}})
    with pytest.raises(ConfigError):
        SimConfig.from_dict({"accuracy": {"a": {"easy": 2}}})


def test_facts_from_csv_reads_wide_file(tmp_path: Path) -> None:
    facts = facts_from_csv(ROOT / "data" / "facts.csv")
    assert len(facts) == 150
    assert {f.difficulty for f in facts} == {"easy", "mid", "hard"}
    yoyo = [f for f in facts if f.object == "Yo-yo"]
    assert len(yoyo) == 3 and yoyo[0].question == "What is the number for Yo-yo?"
    bad = tmp_path / "bad.csv"
    bad.write_text("Thing,Number\nA,1\n")
    with pytest.raises(QuestionsError):
        facts_from_csv(bad)
    with pytest.raises(QuestionsError):
        facts_from_csv(tmp_path / "missing.csv")


def test_main_rejects_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config-json", '{"nope": 1}', "--port", "0"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_sim_process_serves_and_stops() -> None:
    cfg = config(accuracy={"ft-5x": {"*": 1.0}}, format_noise=0.0)
    with SimProcess(cfg) as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", sim.base_url)
        response = httpx.post(sim.base_url + "/chat/completions", json=chat("Ink pot?"), timeout=5)
        assert numbers(response.json()["choices"][0]["message"]["content"]) == ["40913"]
        assert sim.stats()["completions"] == 1
        proc = sim._proc
    assert proc is not None and proc.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.base_url.removesuffix("/v1") + "/health", timeout=2)


async def test_serve_reports_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EndpointError, match="cannot listen"):
            await serve(config(), port=taken.getsockname()[1])


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling classes")
def test_the_target_runs_as_a_batch_job_so_a_request_does_not_preempt_its_clients() -> None:
    """Woken by each request, a target on a machine its clients fill (``--workers 2`` on 2 cores)
    preempted one of them about every third request; as a batch job it waits for a slice to end.
    Not one that enforces a quota: it stamps a request when it reads it, and must read it on time."""
    for cfg, policy in ((config(), os.SCHED_BATCH), (config(rpm=600), os.SCHED_OTHER), (config(tpm=9000), os.SCHED_OTHER)):
        with SimProcess(cfg) as sim:
            assert sim.pid is not None
            assert os.sched_getscheduler(sim.pid) == policy
            assert httpx.post(sim.base_url + "/chat/completions", json=chat("Ink pot?"), timeout=5).status_code == 200


def test_sim_process_reports_a_failed_start() -> None:
    with (
        pytest.raises(EndpointError, match=r"exited at start.*cannot listen"),
        SimProcess(config(), host="203.0.113.1"),
    ):
        pass


def test_sim_process_stops_on_exception() -> None:
    with pytest.raises(RuntimeError), SimProcess(config()) as sim:
        proc = sim._proc
        raise RuntimeError("boom")
    assert proc is not None and proc.poll() is not None


def test_cli_prints_banner() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.sim", "--port", "0", "--facts", str(ROOT / "data" / "facts.csv")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(
            r"engine-sim \(a simulation, not a model\) listening on http://127\.0\.0\.1:\d+/v1\n", line
        )
    finally:
        proc.terminate()
        proc.wait(timeout=5)
