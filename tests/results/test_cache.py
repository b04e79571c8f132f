"""File digests remembered by stat (engine.results.cache): reused only for the same bytes."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import orjson
import pytest

from engine.results.cache import file_sha256


def _remembered(cache: Path) -> dict[str, object]:
    return dict(orjson.loads((cache / "file-digests.json").read_bytes()))


def test_a_settled_file_is_hashed_once_and_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    # ctime cannot be set back, so the file counts as settled only once two seconds have passed.
    monkeypatch.setattr(time, "time_ns", lambda: os.stat(model).st_ctime_ns + 3_000_000_000)
    assert file_sha256(model, cache_dir=cache) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert str(model.resolve()) in _remembered(cache)
    reads: list[Path] = []
    real_open = Path.open

    def spy(self: Path, *args: object, **kwargs: object) -> object:
        reads.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", spy)
    assert file_sha256(model, cache_dir=cache) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert model.resolve() not in reads  # a stat call, not a read of the model


def test_the_same_size_rewritten_in_place_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    monkeypatch.setattr(time, "time_ns", lambda: os.stat(model).st_ctime_ns + 3_000_000_000)
    first = file_sha256(model, cache_dir=cache)
    before = model.stat()
    time.sleep(0.02)  # past a timestamp tick
    with model.open("r+b") as fh:  # same inode, same size, other bytes
        fh.write(b"b" * 1000)
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old modification time put back
    assert [model.stat().st_size, model.stat().st_mtime_ns, model.stat().st_ino] == [
        before.st_size, before.st_mtime_ns, before.st_ino]  # only the change time tells
    assert file_sha256(model, cache_dir=cache) == hashlib.sha256(b"b" * 1000).hexdigest() != first


def test_a_file_changed_just_now_is_not_remembered(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"fresh")
    cache = tmp_path / "cache"
    assert file_sha256(model, cache_dir=cache) == hashlib.sha256(b"fresh").hexdigest()
    assert not (cache / "file-digests.json").exists()  # its stat could still change within one tick


def test_an_unwritable_or_broken_cache_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 10)
    monkeypatch.setattr(time, "time_ns", lambda: os.stat(model).st_ctime_ns + 3_000_000_000)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "file-digests.json").write_bytes(b"{not json")
    assert file_sha256(model, cache_dir=broken) == hashlib.sha256(b"x" * 10).hexdigest()
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")  # a file where the cache directory should be
    assert file_sha256(model, cache_dir=blocked) == hashlib.sha256(b"x" * 10).hexdigest()
