"""Shard logs: per-shard lock, every log read by resume and report, re-sharding finds every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, LogError
from engine.results.lock import RunLock
from engine.results.paths import RunPaths, run_logs
from engine.results.scan import scan_logs
from engine.results.shards import Shard
from engine.results.write import LogWriter


def _record(key: str, status: str = "ok") -> dict[str, object]:
    return {"v": 2, "key": key, "status": status}


def test_shard_parse() -> None:
    assert Shard.parse("3/16") == Shard(3, 16)
    assert Shard.parse("3/16").log_name == "shard-03-of-16.jsonl"
    for bad in ("16/16", "x/2", "1", "-1/2", "1/0"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_lock_admits_the_shards_of_one_run_and_refuses_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with RunLock(root, shard=Shard(0, 2)), RunLock(root, shard=Shard(1, 2)):
        with pytest.raises(LogError, match="shard 0/2 is in use"):
            RunLock(root, shard=Shard(0, 2)).__enter__()
        with pytest.raises(LogError, match="run of 2 shards"):
            RunLock(root, shard=Shard(1, 3)).__enter__()
        with pytest.raises(LogError, match="in use"):
            RunLock(root).__enter__()
    with RunLock(root), pytest.raises(LogError, match="unsharded run"):
        RunLock(root, shard=Shard(0, 2)).__enter__()
    with RunLock(root, shard=Shard(0, 3)):  # all released: another count may start now
        pass


def test_resume_reads_every_log(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "results").mkdir(parents=True)
    with LogWriter(RunPaths(root).results) as w:  # an unsharded run first ...
        w.write([_record("a" * 20), _record("b" * 20, "failed")])
    with LogWriter(RunPaths(root, Shard(1, 4)).results) as w:  # ... then shards of 4
        w.write([_record("b" * 20), _record("c" * 20, "failed")])
    (root / "results" / "shard-00-of-04.jsonl").write_bytes(b'{"v":2,"key":"dddddddddddddddddddd","status":"ok"}')
    assert run_logs(root)[0].name == "results.jsonl" and len(run_logs(root)) == 3
    scan = scan_logs(run_logs(root))
    assert set(scan.ok) == {"a" * 20, "b" * 20}  # the torn line of shard 0 is not done
    assert set(scan.failed) == {"c" * 20}
    assert scan.records == 4 and scan.torn_tail
