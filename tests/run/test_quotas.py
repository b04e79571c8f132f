"""Quotas where providers count them: per model id, or shared by a [quotas] table; concurrency likewise.

Each test runs a real spec through ``prepare`` and ``run_prepared`` on the virtual clock
(tests/support/vtime.py), against an ``httpx.MockTransport`` that records which model each
request named and when: rates and in-flight counts are exact, and nothing depends on the
built-in target's own quota counting.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import orjson

from engine.endpoint.httpx_transport import HttpxTransport
from engine.endpoint.transport import Transport
from engine.experiment.spec import load_spec
from engine.run.quotas import quota_groups
from engine.run.runner import RunOptions, RunSummary, prepare, run_prepared
from tests.support.vtime import run_virtual

FACTS = Path(__file__).resolve().parents[2] / "data" / "facts.csv"  # 150 questions
API = "http://provider.test/v1"


@dataclasses.dataclass
class Provider:
    """A mock provider: answers every chat request after ``latency_s``, recording who asked when."""

    latency_s: float = 0.0
    status_of: Callable[[str, float], httpx.Response | None] = lambda model, now: None
    sent: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    in_flight: Counter[str] = dataclasses.field(default_factory=Counter)
    peak: Counter[str] = dataclasses.field(default_factory=Counter)  # per model, and "" for all together

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the preflight's GET /models
            return httpx.Response(200, json={"object": "list", "data": []})
        model = orjson.loads(request.content)["model"]
        now = anyio.current_time()
        self.sent.append((model, now))
        if (refusal := self.status_of(model, now)) is not None:
            return refusal
        self.in_flight[model] += 1
        self.in_flight[""] += 1
        self.peak[model] = max(self.peak[model], self.in_flight[model])
        self.peak[""] = max(self.peak[""], self.in_flight[""])
        try:
            await anyio.sleep(self.latency_s)
        finally:
            self.in_flight[model] -= 1
            self.in_flight[""] -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": "It is 12345."}}],
                                         "usage": {"prompt_tokens": 20, "completion_tokens": 4}})

    def times(self, model: str) -> list[float]:
        return [t for m, t in self.sent if m == model]

    def count(self, models: set[str], start: float, end: float) -> int:
        """Requests naming one of ``models`` sent in [start, end) seconds after the first request."""
        t0 = self.sent[0][1]
        return sum(1 for m, t in self.sent if m in models and start <= t - t0 < end)


def write_spec(tmp_path: Path, models: str, *, temperatures: str = "[0.0, 1.0]", repeats: int = 2) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "quotas"\nquestions = "{FACTS}"\ntemperatures = {temperatures}\nrepeats = {repeats}\n'
        f"max_tokens = 8\nmax_retry_wait_s = 60\n{models}"
    )
    return spec


def model(name: str, body: str = "", *, base_url: str = API) -> str:
    return f'[[models]]\nname = "{name}"\nbase_url = "{base_url}"\n{body}\n'


def run(spec: Path, provider: Provider) -> tuple[RunSummary, list[int]]:
    """Run ``spec`` on the virtual clock against ``provider``; also returns each connection pool's size."""
    sizes: list[int] = []

    def transport(concurrency: int) -> Transport:
        sizes.append(concurrency)
        return HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(provider.handler)))

    options = RunOptions(out=spec.parent / "run", quiet=True, report=False)
    prepared = prepare(spec, options)

    async def main() -> RunSummary:
        return await run_prepared(prepared, options, transport_factory=transport)

    go: Callable[[], Awaitable[RunSummary]] = main
    summary = run_virtual(go)
    return summary, sizes


def test_four_models_each_given_6000_rpm_are_each_paced_at_6000_per_minute(tmp_path: Path) -> None:
    # Providers count quotas per model: together these may send 24,000/min, not 6,000.
    spec = write_spec(tmp_path, "".join(model(f"m{i}", "rpm = 6000") for i in range(4)))
    provider = Provider(latency_s=0.05)
    summary, sizes = run(spec, provider)
    assert summary.ok == summary.total == 4 * 600 and summary.rate_limited == 0
    assert sizes == [4 * 32]  # one connection pool for the endpoint, room for every model's window
    for name in ("m0", "m1", "m2", "m3"):
        steady = provider.count({name}, 1.0, 5.0)  # 4 s of a 100/s quota, away from start and end
        assert 0.85 * 400 <= steady <= 400 + 2, (name, steady)  # its own quota: not a quarter, never above
        assert max(provider.times(name)) - provider.sent[0][1] < 600 / 100 * 1.2  # 600 tasks in about 6 s
    assert provider.count({"m0", "m1", "m2", "m3"}, 1.0, 5.0) >= 0.85 * 1600


def test_models_naming_one_quota_table_are_paced_together_at_its_rate(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        model("a", 'quota = "pool"') + model("b", 'quota = "pool"') + model("c", "rpm = 6000")
        + "[quotas.pool]\nrpm = 6000\nconcurrency = 16\n",
    )
    provider = Provider(latency_s=0.05)
    summary, sizes = run(spec, provider)
    assert summary.ok == summary.total == 3 * 600
    assert sizes == [16 + 32]
    together = provider.count({"a", "b"}, 1.0, 5.0)
    assert 0.85 * 400 <= together <= 400 + 2  # a and b share 100/s between them
    assert 0.3 * 400 <= provider.count({"a"}, 1.0, 5.0) <= 0.7 * 400  # and both get a share of it
    assert 0.85 * 400 <= provider.count({"c"}, 1.0, 5.0) <= 400 + 2  # c, outside the table, has its own
    assert max(provider.times("a") + provider.times("b")) - provider.sent[0][1] >= 1200 / 100 * 0.95


def test_labels_of_one_model_id_share_its_quota(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        model("x-plain", 'model = "x"\nrpm = 6000') + model("x-seeded", 'model = "x"\nrpm = 6000\nparams = { seed = 3 }'),
    )
    provider = Provider(latency_s=0.05)
    summary, _ = run(spec, provider)
    assert summary.ok == 1200
    assert 0.85 * 400 <= provider.count({"x"}, 1.0, 5.0) <= 400 + 2  # one model id: one 100/s quota


def test_concurrency_is_per_model_and_the_pool_holds_their_sum(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, model("m1", "concurrency = 4") + model("m2", "concurrency = 4"), repeats=1)
    provider = Provider(latency_s=1.0)  # slow: every window stays full
    summary, sizes = run(spec, provider)
    assert summary.ok == 600
    assert sizes == [8]
    assert provider.peak["m1"] == provider.peak["m2"] == 4  # each model never more than its own
    assert provider.peak[""] == 8  # the two together: the sum, not the larger one


def test_a_shared_quota_table_caps_concurrency_for_all_its_models(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, model("a", 'quota = "pool"') + model("b", 'quota = "pool"') + "[quotas.pool]\nconcurrency = 3\n",
        repeats=1,
    )
    provider = Provider(latency_s=1.0)
    summary, sizes = run(spec, provider)
    assert summary.ok == 600 and sizes == [3]
    assert provider.peak[""] == 3 and 1 <= provider.peak["a"] <= 3


def test_a_429_pauses_only_the_model_it_was_about(tmp_path: Path) -> None:
    told: list[float] = []

    def status_of(name: str, now: float) -> httpx.Response | None:
        if name == "m1" and not told and now - 1000.0 >= 1.0:  # the virtual clock starts at 1000
            told.append(now)
            return httpx.Response(429, headers={"retry-after": "3"}, json={"error": {"code": "rate_limit_exceeded"}})
        return None

    spec = write_spec(tmp_path, model("m1", "rpm = 600") + model("m2", "rpm = 600"))
    provider = Provider(latency_s=0.01, status_of=status_of)
    summary, _ = run(spec, provider)
    assert summary.ok == 1200 and summary.rate_limited == 1
    (at,) = told
    pause = (at + 0.1, at + 2.9)  # after requests already past the gate, before the 3 s are over
    m1 = [t for t in provider.times("m1") if pause[0] <= t < pause[1]]
    m2 = [t for t in provider.times("m2") if pause[0] <= t < pause[1]]
    assert m1 == []  # the model told to wait waits
    assert len(m2) >= 0.85 * 10 * 2.8  # the other goes on at its own 10/s


def test_a_429_pauses_every_model_of_a_shared_quota(tmp_path: Path) -> None:
    told: list[float] = []

    def status_of(name: str, now: float) -> httpx.Response | None:
        if name == "a" and not told and now - 1000.0 >= 1.0:
            told.append(now)
            return httpx.Response(429, headers={"retry-after": "3"})
        return None

    spec = write_spec(
        tmp_path, model("a", 'quota = "pool"') + model("b", 'quota = "pool"') + model("c", "rpm = 600")
        + "[quotas.pool]\nrpm = 600\n",
    )
    provider = Provider(latency_s=0.01, status_of=status_of)
    summary, _ = run(spec, provider)
    assert summary.ok == 1800
    (at,) = told
    in_pause: defaultdict[str, int] = defaultdict(int)
    for name, t in provider.sent:
        if at + 0.1 <= t < at + 2.9:
            in_pause[name] += 1
    assert in_pause["a"] == in_pause["b"] == 0
    assert in_pause["c"] >= 0.85 * 10 * 2.8


def test_quota_groups_follow_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(
        tmp_path,
        model("a", 'quota = "pool"') + model("b", 'quota = "pool"') + model("c", "rpm = 60\ntpm = 900")
        + model("d", 'api_key_env = "OTHER"\nrpm = 60') + model("e", 'concurrency = 2', base_url="sim")
        + "[quotas.pool]\nrpm = 600\ntpm = 90000\nconcurrency = 8\n",
    ))
    groups = quota_groups(spec)
    assert [(g.name, g.shared, [m.name for m in g.models]) for g in groups] == [
        ("pool", True, ["a", "b"]), ("c", False, ["c"]), ("d", False, ["d"]), ("e", False, ["e"]),
    ]
    assert [(g.limits.rpm, g.limits.tpm, g.limits.concurrency) for g in groups] == [
        (600, 90_000, 8), (60, 900, 32), (60, None, 32), (None, None, 2),
    ]
    assert all(g.limits.max_pause_s == 60 for g in groups)  # the spec's cap on any wait
    assert [g.label for g in groups] == [
        f"quota 'pool' shared by a, b at {API}", f"c at {API}", f"d at {API} (key $OTHER)",
        "e at sim (built-in target)",
    ]
