"""The throughput benchmark's library side: a tiny real run, the tables it builds, wrk parsing, errors."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

import engine.bench.throughput as bench
from engine.bench.throughput import (
    BenchConfig,
    BenchTable,
    BenchTarget,
    Measurement,
    parse_wrk,
    run_bench,
    tabulate,
)
from engine.errors import ConfigError, EndpointError

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:18999/v1/chat/completions
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.12ms    1.58ms  12.29ms   85.16%
    Req/Sec    15.28k     4.40k   26.80k    90.00%
  Latency Distribution
     50%  268.00us
     75%    1.55ms
     90%    3.37ms
     99%    7.43ms
  15215 requests in 1.00s, 6.20MB read
  Non-2xx or 3xx responses: 15
Requests/sec:  15183.10
Transfer/sec:      6.19MB
"""


def _m(name: str, rate: float, *, requests: int = 1000, ok: int | None = None, cpu_us: float = 100.0) -> Measurement:
    wall = requests / rate
    return Measurement(contestant=name, requests=requests, ok=requests if ok is None else ok, wall_s=wall,
                       cpu_s=cpu_us * requests / 1e6, peak_rss_mb=40.0, p50_ms=5.0, p99_ms=9.0,
                       target_cpu_s=wall / 2)


def test_smoke_run_has_a_row_per_contestant_with_positive_rates() -> None:
    config = BenchConfig(tasks=300, concurrency=16, slow_tasks=64, ceiling_s=1.0 if shutil.which("wrk") else 0)
    table = run_bench(config)
    expected = ["aiohttp", "engine", "httpx"] + (["openai"] if importlib.util.find_spec("openai") else [])
    names = [r.contestant for r in table.rows]
    assert [n for n in names if n != "wrk"] == expected
    assert ("wrk" in names) == bool(shutil.which("wrk"))
    for row in table.rows:
        assert row.rate > 0, row
        assert row.failed == 0, row
        assert row.p50_ms is not None and row.p99_ms is not None and 0 < row.p50_ms <= row.p99_ms
        if row.contestant != "wrk":
            assert row.cpu_us is not None and row.cpu_us > 0
            assert row.peak_rss_mb is not None and row.peak_rss_mb > 0
            assert row.requests == config.requests_for(row.contestant)
    assert table.row("engine").requests == 300
    assert table.row("httpx").requests == 64
    text = table.render()
    for label in ("bare aiohttp loop", "engine end to end", "plain httpx.AsyncClient"):
        assert label in text


def test_requests_are_whole_passes_and_slow_clients_send_fewer() -> None:
    config = BenchConfig(tasks=250, questions=100, concurrency=8)
    assert config.requests_for("engine") == config.requests_for("aiohttp") == 300
    assert config.requests_for("httpx") == 32  # 4 × concurrency beats a tenth of 300
    assert BenchConfig(tasks=20_000, concurrency=64).requests_for("openai") == 2_000
    assert BenchConfig(tasks=20_000, slow_tasks=500).requests_for("httpx") == 500


@pytest.mark.parametrize(
    "kwargs", [{"tasks": 0}, {"concurrency": 0}, {"repeats": 0}, {"latency_ms": -1.0}, {"contestants": ("curl",)}]
)
def test_bad_config_is_a_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


def test_ratios_are_medians_of_per_round_ratios() -> None:
    # The machine slows down in round 2: absolute rates halve, the ratio within each round holds.
    rounds = [
        (_m("aiohttp", 1000), _m("engine", 900), _m("httpx", 40)),
        (_m("aiohttp", 500), _m("engine", 450)),
        (_m("aiohttp", 800), _m("engine", 640, ok=990)),
    ]
    rows = {r.contestant: r for r in tabulate(["aiohttp", "engine", "httpx"], rounds, None)}
    assert rows["engine"].ratio == pytest.approx(0.9)
    assert rows["engine"].rate == pytest.approx(640)
    assert rows["engine"].failed == 10
    assert rows["httpx"].ratio == pytest.approx(0.04)  # it ran in the first round only
    assert rows["aiohttp"].target_busy == pytest.approx(0.5)


def test_ceiling_row_comes_first_and_renders_with_the_ideal_rate() -> None:
    ceiling = parse_wrk(WRK_OUTPUT)
    assert ceiling is not None
    rows = tabulate(["aiohttp", "engine"], [(_m("aiohttp", 1000), _m("engine", 950))], ceiling)
    assert [r.contestant for r in rows] == ["wrk", "aiohttp", "engine"]
    assert rows[0].ratio == pytest.approx(15.18, rel=1e-3)
    table = BenchTable(config=BenchConfig(concurrency=64, latency_ms=50, contestants=("aiohttp", "engine")), rows=rows)
    assert table.ideal_rate == pytest.approx(1280)
    text = table.render()
    assert "ideal 1,280 req/s" in text and "target ceiling (wrk, native)" in text
    assert "| 0.74 |" in text  # engine: 950 of 1,280 req/s


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    m = parse_wrk(WRK_OUTPUT)
    assert m is not None
    assert m.requests == 15215 and m.ok == 15200
    assert m.rate == pytest.approx(15183.1)
    assert m.p50_ms == pytest.approx(0.268)
    assert m.p99_ms == pytest.approx(7.43)
    assert parse_wrk("unable to connect to 127.0.0.1:9 Connection refused") is None


def test_a_contestant_that_fails_is_an_error_naming_it() -> None:
    target = BenchTarget(base_url="http://127.0.0.1:9/v1", pid=None)  # nothing listens on port 9
    with pytest.raises(EndpointError, match=r"bench: aiohttp failed .*(Connect|connect|refused)"):
        run_bench(BenchConfig(tasks=10, questions=10, concurrency=2, contestants=("aiohttp",)), target=target)


def test_main_bench_prints_the_machine_and_the_table(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    seen: list[BenchConfig] = []

    def fake_run(config: BenchConfig) -> BenchTable:
        seen.append(config)
        return BenchTable(config=config, rows=tabulate(["aiohttp", "engine"], [(_m("aiohttp", 10), _m("engine", 9))], None))

    monkeypatch.setattr(bench, "run_bench", fake_run)
    assert bench.main_bench(tasks=500, concurrency=8, latency_ms=20) == 0
    assert seen == [BenchConfig(tasks=500, concurrency=8, latency_ms=20)]
    out = capsys.readouterr().out
    assert "cores" in out and "engine end to end" in out and "0.90×" in out
