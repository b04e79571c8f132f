"""The sim's routing, quotas, faults and counters (part of :mod:`engine.sim`).

Usage (what :func:`engine.sim.serve.serve` does)::

    sim = SimServer(config, asyncio.get_running_loop())
    server = await loop.create_server(sim.protocol, "127.0.0.1", 0)
"""

from __future__ import annotations

import asyncio
import random
import types
from collections import Counter, deque
from typing import Any

import orjson

from engine.sim.answers import Answerer, estimate_tokens
from engine.sim.apis import SIM_APIS, Ask, SimApi, duration
from engine.sim.batch import BATCH_PREFIXES, BatchStore
from engine.sim.config import SimConfig
from engine.sim.http import HttpProtocol, Reply, error_reply, http_response

_ROUTES = types.MappingProxyType(
    {**dict.fromkeys(SIM_APIS, b"POST"), b"/v1/models": b"GET", b"/health": b"GET"}
)
_KEEP_BODY = 8192  # the largest request body whose reading the sim remembers (a question, not a long context)
_KEEP_BODIES = 4096  # how many readings it remembers; all are forgotten at once when full
_HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"


class _Log:
    """One sliding window of a quota: what was admitted in the last ``length`` seconds."""

    __slots__ = ("allowance", "costs", "length", "times", "total")

    def __init__(self, length: float, allowance: float):
        self.length = length
        self.allowance = allowance
        self.times: deque[float] = deque()
        self.costs: deque[float] = deque()
        self.total = 0.0

    def trim(self, now: float) -> None:
        """Forget what left the window ``(now - length, now]``."""
        times, costs, edge = self.times, self.costs, now - self.length
        while times and times[0] <= edge:
            times.popleft()
            self.total -= costs.popleft()
        if not times:
            self.total = 0.0  # no float drift survives an empty window

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0: it fits now); a cost above the allowance fits an empty window."""
        if not self.times or self.total + cost <= self.allowance + 1e-9:
            return 0.0
        need = min(self.total, self.total + cost - self.allowance)  # what has to leave first
        freed = 0.0
        for at, spent in zip(self.times, self.costs, strict=True):
            freed += spent
            if freed >= need - 1e-9:
                return at + self.length - now
        return self.times[-1] + self.length - now

    def remaining(self) -> float:
        return max(0.0, self.allowance - self.total)


class SlidingQuota:
    """A per-minute quota enforced over every sliding window of ``window_s`` seconds and of a minute.

    In any window of ``window_s`` at most ``per_minute × window_s / 60`` units (one request larger
    than that passes only alone in its window), in any minute at most ``per_minute``. Usage::

        quota = SlidingQuota(1200, 1.0)           # at most 20 requests in any second
        wait = quota.wait_s(1, now)               # 0: admit, then quota.take(1, now)
    """

    __slots__ = ("logs", "per_minute")

    def __init__(self, per_minute: float, window_s: float):
        self.per_minute = per_minute
        lengths = sorted({min(window_s, 60.0), 60.0})
        self.logs = tuple(_Log(length, per_minute * length / 60.0) for length in lengths)

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until every window admits ``cost`` (0: now)."""
        wait = 0.0
        for log in self.logs:
            log.trim(now)
            wait = max(wait, log.wait_s(cost, now))
        return wait

    def take(self, cost: float, now: float) -> None:
        """Count ``cost`` units admitted at ``now`` (after :meth:`wait_s` said 0)."""
        for log in self.logs:
            log.times.append(now)
            log.costs.append(cost)
            log.total += cost

    def headers(self, unit: bytes, now: float, api: SimApi = SIM_APIS[b"/v1/chat/completions"]) -> bytes:
        """The API's rate-limit headers of the tightest window: its remaining share, and when its oldest entry leaves."""
        log = min(self.logs, key=lambda lg: lg.remaining() / lg.allowance)
        reset = log.times[0] + log.length - now if log.times else 0.0
        return api.rate_lines(self.per_minute, log.remaining(), max(0.0, reset), unit)


class SimServer:
    """The sim's shared state (answerer, quotas, faults, counters); ``protocol`` makes a connection handler.

    Usage: ``await loop.create_server(SimServer(cfg, loop).protocol, host, port)``
    """

    def __init__(self, config: SimConfig, loop: asyncio.AbstractEventLoop):
        self.config = config
        self.loop = loop
        self.rng = random.Random(config.seed)
        self.answerer = Answerer(config)
        self.faults: list[tuple[float, str]] = []
        total = 0.0
        for name, rate in config.faults.rates().items():
            if rate > 0:
                total += rate
                self.faults.append((total, name))
        # (requests, tokens) quotas by model id, or under "" for all models with quota_scope "server".
        self.quotas: dict[str, tuple[SlidingQuota | None, SlidingQuota | None]] = {}
        self.limited = config.rpm is not None or config.tpm is not None
        self.held_until = 0.0  # POST /sim/hold: every chat request is answered 429 until then
        self.models = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "engine-sim"}
                    for m in [*sorted(m for m in config.accuracy if m != "*"), "sim"]
                ],
            }
        )
        self.connections: set[HttpProtocol] = set()
        self.counts: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()  # by int: no str() per reply; stats() names them
        self.by_model: Counter[str] = Counter()
        self.by_api: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.answer_counts: Counter[str] = Counter()
        self.sequence = 0
        self._latency_s = config.latency_ms / 1000.0
        self._parsed: dict[tuple[str, bytes], tuple[str, Ask | None]] = {}
        self.batches = BatchStore(config, loop, self.answer_item)

    def protocol(self) -> HttpProtocol:
        """A handler for one new connection (the ``create_server`` factory)."""
        return HttpProtocol(self)

    def abort_all(self) -> None:
        """Close every connection at once, dropping pending delayed replies."""
        for connection in list(self.connections):
            connection.abort()

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /sim/stats`` returns."""
        return {
            "requests": self.counts["requests"],
            "chat_requests": self.counts["chat"],
            "completions": self.counts["completions"],
            "rate_limited": self.by_status[429],
            "quota_limited": self.counts["quota"],
            "held": self.counts["held"],
            "dropped": self.counts["dropped"],
            "by_status": {str(status): n for status, n in self.by_status.items()},
            "by_model": dict(self.by_model),
            "by_api": dict(self.by_api),
            "faults": dict(self.fault_counts),
            "answers": dict(self.answer_counts),
            "open_connections": len(self.connections),
            "batch": self.batches.stats(),
        }

    def sent(self, reply: Reply) -> None:
        """Count a reply once it is written (a slow reply to a client that left is never counted)."""
        if reply.status:
            self.by_status[reply.status] += 1
        else:
            self.counts["dropped"] += 1
        if reply.completion:
            self.counts["completions"] += 1

    def handle(self, method: bytes, target: bytes, body: bytes, keep_alive: bool) -> Reply:
        """Route one parsed request."""
        path, _, query = target.partition(b"?")
        if path == b"/sim/hold" and method == b"POST":
            return self._hold(query, keep_alive)
        if path == b"/sim/stats":
            return Reply(
                200,
                http_response(200, orjson.dumps(self.stats()), keep_alive=keep_alive),
                close=not keep_alive,
            )
        self.counts["requests"] += 1
        if path.startswith(BATCH_PREFIXES):
            return self._batch(method, path, query, body, keep_alive)
        routes = _ROUTES
        if path not in routes:
            return error_reply(
                404,
                f"Invalid URL ({method.decode(errors='replace')} {path.decode(errors='replace')})",
                "invalid_request_error",
                keep_alive=keep_alive,
            )
        api = SIM_APIS.get(path)
        if method != routes[path]:
            return (error_reply if api is None else api.error)(
                405,
                f"Method {method.decode(errors='replace')} not allowed on {path.decode()}",
                "invalid_request_error",
                keep_alive=keep_alive,
                extra=b"Allow: " + routes[path] + b"\r\n",
            )
        if api is not None:
            return self._ask(api, body, keep_alive)
        payload = self.models if path == b"/v1/models" else b'{"status":"ok","engine_sim":true}'
        return Reply(200, http_response(200, payload, keep_alive=keep_alive), close=not keep_alive)

    def _batch(self, method: bytes, path: bytes, query: bytes, body: bytes, keep_alive: bool) -> Reply:
        """The Batch APIs' files and batches (engine.sim.batch), errors in the API's own shape."""
        status, payload, kind = self.batches.handle(method, path, query, body)
        if kind == b"error":
            api = SIM_APIS[b"/v1/messages" if path.startswith(b"/v1/messages") else b"/v1/chat/completions"]
            kind_name = "not_found_error" if status == 404 else "invalid_request_error"
            return api.error(status, payload.decode(), kind_name, keep_alive=keep_alive)
        return Reply(status, http_response(status, payload, keep_alive=keep_alive, content_type=kind),
                     close=not keep_alive)

    def answer_item(self, path: bytes, request: Any) -> tuple[int, bytes]:
        """One request of a batch, answered as the online route answers it (the same model, the same
        answer) but without faults, quotas or latency: (200, the reply body) or (400, why not)."""
        api = SIM_APIS.get(path)
        if api is None:
            return 400, b"unknown url " + path
        problem, parsed = api.parse(request)
        if parsed is None:
            return 400, problem.encode()
        self.counts["batch_items"] += 1
        content, kind, cut, prompt_tokens, completion_tokens = self._compose(api, parsed)
        self.sequence += 1
        self.answer_counts[kind] += 1
        return 200, api.reply(self.sequence, parsed[0], content, cut, prompt_tokens, completion_tokens)

    def _compose(self, api: SimApi, parsed: Ask) -> tuple[str, str, bool, int, int]:
        """(reply text, kind, cut at max_tokens?, prompt tokens, completion tokens) of one parsed request."""
        model, text, temperature, max_tokens, request_seed, prompt_tokens = parsed
        self.by_model[model] += 1
        self.by_api[api.name] += 1
        content, kind = self.answerer.answer(model, text, temperature, request_seed, self.rng)
        completion_tokens = estimate_tokens(content)
        cut = max_tokens is not None and completion_tokens > max_tokens
        if cut:
            assert max_tokens is not None
            content, completion_tokens = content[: max_tokens * 4], max_tokens
        return content, kind, cut, prompt_tokens, completion_tokens

    def _ask(self, api: SimApi, body: bytes, keep_alive: bool) -> Reply:
        """One question in any of the three APIs: parsed, answered, held, quota'd, faulted, replied."""
        problem, parsed = self._parse(api, body)
        if parsed is None:
            return api.error(400, problem, "invalid_request_error", keep_alive=keep_alive)
        self.counts["chat"] += 1
        content, kind, cut, prompt_tokens, completion_tokens = self._compose(api, parsed)
        model, max_tokens = parsed[0], parsed[3]

        if self.held_until and (wait := self.held_until - self.loop.time()) > 0:
            self.counts["held"] += 1
            return api.error(429, "Rate limit reached (engine-sim hold). Please try again later.", "requests",
                             code="rate_limit_exceeded", keep_alive=keep_alive, extra=api.retry(wait))
        quota = b""
        if self.limited:
            rejection = self._quota(
                api, model, prompt_tokens + (max_tokens if max_tokens is not None else completion_tokens), keep_alive
            )
            if isinstance(rejection, Reply):
                return rejection
            quota = rejection
        fault = self._draw_fault() if self.faults else None
        delay = self._delay()
        if fault is not None:
            self.fault_counts[fault] += 1
            reply = self._fault(api, model, fault, keep_alive, quota, delay)
            if reply is not None:
                return reply
            if fault == "slow":
                delay = self.config.faults.slow_s
        self.sequence += 1
        payload = api.reply(self.sequence, model, content, cut, prompt_tokens, completion_tokens)
        data = http_response(200, payload, keep_alive=keep_alive, extra=quota)
        if fault == "drop":
            # Cut anywhere after the status line: sometimes mid-headers, sometimes mid-body.
            return Reply(0, data[: self.rng.randrange(17, len(data) - 1)], delay=delay, close=True)
        self.answer_counts[kind] += 1
        return Reply(200, data, delay=delay, close=not keep_alive, completion=True)

    def _parse(self, api: SimApi, body: bytes) -> tuple[str, Ask | None]:
        """(problem, None) or ("", the ask) of a request body. A body is read once: an evaluation asks
        the same questions again and again, and the same bytes always read the same way."""
        key = (api.name, body)
        if (known := self._parsed.get(key)) is not None:
            return known
        try:
            read = api.parse(orjson.loads(body))
        except orjson.JSONDecodeError:
            read = ("We could not parse the JSON body of your request.", None)
        if len(body) <= _KEEP_BODY:  # any client may send any body: what is kept is bounded
            if len(self._parsed) >= _KEEP_BODIES:
                self._parsed.clear()
            self._parsed[key] = read
        return read

    def _hold(self, query: bytes, keep_alive: bool) -> Reply:
        """``POST /sim/hold?s=2``: answer every chat request 429 with Retry-After for the next 2 s
        (a provider's pause, for benchmarks of what follows one)."""
        try:
            seconds = float(query.removeprefix(b"s="))
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            return error_reply(400, "hold needs ?s=SECONDS (0 to 3600)", "invalid_request_error", keep_alive=keep_alive)
        self.held_until = self.loop.time() + seconds
        return Reply(200, http_response(200, b'{"held_s":%g}' % seconds, keep_alive=keep_alive), close=not keep_alive)

    def _quotas_of(self, model: str) -> tuple[SlidingQuota | None, SlidingQuota | None]:
        key = model if self.config.quota_scope == "model" else ""
        if (quotas := self.quotas.get(key)) is None:
            config = self.config
            window = config.quota_window_s
            quotas = (
                SlidingQuota(config.rpm, window) if config.rpm else None,
                SlidingQuota(config.tpm, window) if config.tpm else None,
            )
            self.quotas[key] = quotas
        return quotas

    def _quota(self, api: SimApi, model: str, cost: int, keep_alive: bool) -> Reply | bytes:
        """Take one request and ``cost`` tokens from the model's quotas: their headers, or a 429 if either is short."""
        now = self.loop.time()
        requests, tokens = self._quotas_of(model)
        limits = [
            (unit, quota, c)
            for unit, quota, c in ((b"requests", requests, 1), (b"tokens", tokens, cost))
            if quota is not None
        ]
        wait, unit = max((quota.wait_s(c, now), unit) for unit, quota, c in limits)
        if wait <= 0:
            for _, quota, c in limits:
                quota.take(c, now)
        headers = b"".join(quota.headers(u, now, api) for u, quota, _ in limits) if self.config.rate_headers else b""
        if wait <= 0:
            return headers
        self.counts["quota"] += 1
        return api.error(
            429,
            f"Rate limit reached for {unit.decode()} (engine-sim quota). Please try again in {duration(wait)}.",
            unit.decode(),
            code="rate_limit_exceeded",
            keep_alive=keep_alive,
            extra=api.retry(wait) + headers,
        )

    def _draw_fault(self) -> str | None:
        u = self.rng.random()
        return next((name for bound, name in self.faults if u < bound), None)

    def _delay(self) -> float:
        config = self.config
        if not config.jitter_ms:
            return self._latency_s
        ms = config.latency_ms + self.rng.uniform(-config.jitter_ms, config.jitter_ms)
        return max(0.0, ms) / 1000.0

    def _fault(self, api: SimApi, model: str, fault: str, keep_alive: bool, quota: bytes, delay: float) -> Reply | None:
        """The reply for a fault in the API's own shape, or None when the fault shapes a normal reply (slow, drop)."""
        if fault == "error_500":
            return api.error(500, "The server had an error while processing your request. Sorry about that!",
                             "server_error", keep_alive=keep_alive, extra=quota, delay=delay)
        if fault == "error_503":  # Anthropic says it with 529 overloaded_error
            return api.error(api.overloaded, "The engine is currently overloaded, please try again later.",
                             "server_error", keep_alive=keep_alive, extra=quota, delay=delay)
        if fault == "error_502":
            data = http_response(502, _HTML_502, keep_alive=keep_alive, content_type=b"text/html")
            return Reply(502, data, delay=delay, close=not keep_alive)
        if fault in ("rate_429", "rate_429_bare"):
            retry = b"" if fault == "rate_429_bare" else api.retry(self.config.faults.retry_after_s)
            return api.error(429, "Rate limit reached for requests (engine-sim fault).", "requests",
                             code="rate_limit_exceeded", keep_alive=keep_alive, extra=retry + quota, delay=delay)
        if fault == "malformed":
            data = http_response(200, api.truncated, keep_alive=keep_alive, extra=quota)
            return Reply(200, data, delay=delay, close=not keep_alive)
        if fault == "empty_choices":
            data = http_response(200, api.empty(model), keep_alive=keep_alive, extra=quota)
            return Reply(200, data, delay=delay, close=not keep_alive)
        return None
