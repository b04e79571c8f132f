"""The results log: appends, what a scan reads back, torn tails, damaged lines, and whose run directory it is."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from engine.errors import LogError
from engine.experiment.grid import Grid, build_grid
from engine.experiment.questions import load_questions
from engine.experiment.spec import Spec, load_spec
from engine.results.paths import RunPaths, check_owner, prepare_run_dir
from engine.results.record import Record
from engine.results.scan import scan_log
from engine.results.write import LogWriter, repair_torn_tail
from engine.run.targets import model_targets
from tests.conftest import BASE_SPEC, SpecDir


def record(key: str, status: str = "ok", **extra: Any) -> dict[str, Any]:
    ok = status == "ok"
    return {
        "v": 1, "key": key, "model": "m1", "model_id": "m1", "qid": "Anchor/easy", "question": "Q?",
        "tags": {"object": "Anchor", "difficulty": "easy"}, "temperature": 0.0, "repeat": 0, "expected": "11246",
        "reply": "11246" if ok else None, "extracted": "11246" if ok else None, "outcome": "correct" if ok else None,
        "correct": True if ok else None, "status": status, "error": None if ok else "http 500 after 6 attempts",
        "attempts": 1 if ok else 6, "http": [200] if ok else [500] * 6, "latency_ms": 3.0 if ok else None,
        "prompt_tokens": 10 if ok else None, "completion_tokens": 3 if ok else None, "t_start": 1.0, "t_end": 2.0,
        **extra,
    }  # fmt: skip


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_log(path: Path, records: list[dict[str, Any]]) -> None:
    with LogWriter(path) as writer:
        writer.write(records)


@pytest.fixture
def spec(spec_dir: SpecDir) -> Spec:
    return load_spec(spec_dir.write())


def grid_of(spec: Spec) -> Grid:
    questions = load_questions(spec.questions)
    return build_grid(spec, questions, model_targets(spec, questions))


def test_writer_appends_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_log(path, [record("a"), record("b", "failed")])
    with LogWriter(path, fsync="always") as writer:  # a second writer appends; it never truncates
        writer.write([record("c")])
        writer.write([])
        assert writer.records == 1
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [orjson.loads(line)["key"] for line in lines[:-1]] == ["a", "b", "c"]
    assert orjson.loads(lines[1]) == record("b", "failed")  # every field back as written


@pytest.mark.parametrize("fsync", ["never", "always", 2])
def test_writer_fsync_policies_write_the_same_bytes(tmp_path: Path, fsync: str | int) -> None:
    path = tmp_path / f"{fsync}.jsonl"
    with LogWriter(path, fsync=fsync) as writer:
        for i in range(5):
            writer.write([record(f"k{i}")])
    assert path.read_bytes() == b"".join(orjson.dumps(record(f"k{i}")) + b"\n" for i in range(5))


def test_writer_consumes_a_stream_in_order(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[Record](100)
        with LogWriter(path) as writer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.consume, receive)
                async with send:
                    for i in range(1500):  # more than one write batch
                        await send.send(record(f"k{i}"))  # type: ignore[arg-type]  # a schema-1 record
            assert writer.records == 1500

    anyio.run(main)
    assert [orjson.loads(line)["key"] for line in path.read_bytes().splitlines()] == [f"k{i}" for i in range(1500)]


def test_scan_ok_and_failed_sets_and_retry_semantics(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_log(path, [record("a"), record("b", "failed"), record("c", "failed"), record("c"), record("d", "failed")])
    scan = scan_log(path)
    assert scan.ok == {"a", "c"}  # c failed, then succeeded on a resume: it is done
    assert scan.failed == {"b", "d"}
    assert scan.records == 5 and not scan.torn_tail
    assert scan.done(retry_failed=True) == {"a", "c"}  # failed tasks are asked again
    assert scan.done(retry_failed=False) == {"a", "b", "c", "d"}


def test_scan_of_no_log_or_an_empty_log(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    for path in (tmp_path / "absent.jsonl", empty):
        scan = scan_log(path)
        assert (scan.ok, scan.failed, scan.records, scan.torn_tail) == (frozenset(), frozenset(), 0, False)
    assert repair_torn_tail(tmp_path / "absent.jsonl") == 0


@pytest.mark.parametrize(
    "tail",
    [orjson.dumps(record("torn"))[:37], orjson.dumps(record("torn"))],  # cut mid-record; cut just before "\n"
    ids=["partial record", "whole record without newline"],
)
def test_torn_tail_is_left_out_then_cut(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "results.jsonl"
    write_log(path, [record("a"), record("b", "failed")])
    intact = path.read_bytes()
    with path.open("ab") as f:
        f.write(tail)
    before = digest(path)
    scan = scan_log(path)
    assert scan.torn_tail and scan.records == 2
    assert scan.ok == {"a"} and scan.failed == {"b"}  # "torn" is not done: repair cuts it, so it is asked again
    assert digest(path) == before  # scanning never writes
    assert repair_torn_tail(path) == len(tail)
    assert path.read_bytes() == intact
    assert repair_torn_tail(path) == 0
    write_log(path, [record("torn")])
    assert scan_log(path).ok == {"a", "torn"} and not scan_log(path).torn_tail


def test_torn_tail_of_a_log_with_one_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"v":1,"key":"ab')
    assert scan_log(path).torn_tail and scan_log(path).records == 0
    assert repair_torn_tail(path) == 16 and path.read_bytes() == b""


@pytest.mark.parametrize(
    "bad",
    [b"this is not json", b'{"v":1,"key":"x","sta', b'{"key": "x"}', b'{"key": "x", "status": null}', b"[1, 2]"],
    ids=["text", "cut record", "no status", "null status", "not an object"],
)
@pytest.mark.parametrize("torn", [False, True], ids=["clean end", "torn end"])
def test_a_bad_line_in_the_middle_is_an_error_and_nothing_changes(tmp_path: Path, bad: bytes, torn: bool) -> None:
    path = tmp_path / "results.jsonl"
    write_log(path, [record("a"), record("b")])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + bad + b"\n" + lines[1] + (b'{"v":1,"ke' if torn else b""))
    before = digest(path)
    with pytest.raises(LogError, match=rf"^{re.escape(str(path))}:2: unreadable record .*damaged$"):
        scan_log(path)
    assert digest(path) == before


def test_a_blank_line_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    for tail in (b"", b'{"v":1,"ke'):  # read the same way by the fast and the careful reader
        path.write_bytes(orjson.dumps(record("a")) + b"\n\n" + orjson.dumps(record("b")) + b"\n" + tail)
        assert scan_log(path).ok == {"a", "b"}


def test_scan_of_a_big_log(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_log(path, [record(f"{i:020x}", "ok" if i % 10 else "failed") for i in range(20_000)])
    scan = scan_log(path)
    assert scan.records == 20_000 and len(scan.ok) == 18_000 and len(scan.failed) == 2_000


def test_check_owner(tmp_path: Path, spec: Spec) -> None:
    paths = RunPaths(tmp_path / "run")
    check_owner(paths, spec.name)  # no directory yet: fine
    prepare_run_dir(paths, spec.name, "spec text", fresh=False, grid=grid_of(spec))
    check_owner(paths, spec.name)  # its own directory: fine
    write_log(paths.results, [record("a")])
    before = {p.name: digest(p) for p in paths.root.iterdir()}
    other = Spec(path=spec.path, name="other-experiment", questions=spec.questions, models=spec.models)
    with pytest.raises(LogError, match=r"holds the log of experiment 'tiny', not 'other-experiment'; choose another --out"):
        check_owner(paths, other.name)
    with pytest.raises(LogError, match="holds the log of experiment 'tiny'"):
        prepare_run_dir(paths, other.name, "other text", fresh=True, grid=grid_of(other))  # --fresh does not override another's log
    assert {p.name: digest(p) for p in paths.root.iterdir()} == before


@pytest.mark.parametrize("meta", [None, b"not json", b'{"schema": 1}', b"[1]"], ids=["absent", "garbage", "no name", "list"])
def test_a_log_without_a_valid_run_json_is_refused(tmp_path: Path, spec: Spec, meta: bytes | None) -> None:
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    write_log(paths.results, [record("a")])
    if meta is not None:
        paths.meta.write_bytes(meta)
    with pytest.raises(LogError, match=r"run\.json"):
        check_owner(paths, spec.name)


def test_prepare_run_dir_writes_meta_and_spec_and_keeps_the_log(tmp_path: Path, spec: Spec) -> None:
    paths = RunPaths(tmp_path / "runs" / "tiny")
    prepare_run_dir(paths, spec.name, BASE_SPEC, fresh=False, grid=grid_of(spec))
    meta = orjson.loads(paths.meta.read_bytes())
    assert meta["name"] == "tiny" and meta["schema"] == 2
    assert next(iter(meta)) == "simulation" and meta["simulation"].startswith("yes: every answer")
    assert [(m["name"], m["simulated"]) for m in meta["models"]] == [("m1", True), ("m2", True)]
    assert all(m["target"].startswith("sim:") for m in meta["models"])
    assert Grid.from_json(paths.grid.read_bytes()) == grid_of(spec)
    assert paths.spec_copy.read_text() == BASE_SPEC
    write_log(paths.results, [record("a")])
    log_before, created = digest(paths.results), meta["created"]
    prepare_run_dir(paths, spec.name, BASE_SPEC + "# edited\n", fresh=False, grid=grid_of(spec))  # a resume
    assert digest(paths.results) == log_before
    assert orjson.loads(paths.meta.read_bytes())["created"] == created  # rewritten, its creation time kept
    assert paths.spec_copy.read_text().endswith("# edited\n")
    assert not list(paths.root.glob("*.tmp"))


def test_fresh_renames_the_old_log_aside_never_deletes(tmp_path: Path, spec: Spec) -> None:
    paths = RunPaths(tmp_path / "run")
    prepare_run_dir(paths, spec.name, BASE_SPEC, fresh=False, grid=grid_of(spec))
    contents = []
    for i in range(3):  # three fresh starts within the same second keep all three old logs
        write_log(paths.results, [record(f"run{i}")])
        contents.append(paths.results.read_bytes())
        prepare_run_dir(paths, spec.name, BASE_SPEC, fresh=True, grid=grid_of(spec))
        assert not paths.results.exists()
    aside = sorted(paths.root.glob("results.*.jsonl.old"))
    assert sorted(p.read_bytes() for p in aside) == sorted(contents)
    assert scan_log(paths.results).records == 0


def test_write_ahead_journal_counts_requests_a_stop_left_in_flight(tmp_path: Path) -> None:
    from engine.results.paths import RunPaths
    from engine.results.write import LogWriter, in_flight_at_stop

    paths = RunPaths(tmp_path)
    assert in_flight_at_stop(paths, frozenset()) is None  # no journal kept: unknown, not zero
    with LogWriter(paths.results, journal=paths.started) as writer:
        for key in ("a" * 20, "b" * 20, "c" * 20):
            writer.started(key)
        writer.write([{"key": "a" * 20}])
    with paths.started.open("ab") as f:
        f.write(b'{"key":"dddd')  # torn: never finished writing, so never sent
    assert in_flight_at_stop(paths, frozenset({"a" * 20})) == 2
    with LogWriter(paths.results, journal=paths.started):
        pass
    assert paths.started.read_bytes() == b""  # each run starts its own journal
