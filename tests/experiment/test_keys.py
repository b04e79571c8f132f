"""KeySet: compact task keys with set semantics; shard_of: a stable, even split."""

from __future__ import annotations

import os

from engine.experiment.grid import shard_of
from engine.experiment.keys import KeySet


def test_keyset_behaves_as_a_set_of_its_keys() -> None:
    keys = [os.urandom(10).hex() for _ in range(2000)] + ["k1", "00" * 10, "ABCDEF0123456789ABCD"]
    done = KeySet.from_keys(keys + keys[:10])  # duplicates count once
    assert len(done) == len(keys)
    assert set(done) == set(keys)
    assert all(k in done for k in keys)
    assert os.urandom(10).hex() not in done and "k2" not in done
    assert done.contains_many([keys[0], os.urandom(10).hex(), "k1"]) == [True, False, True]
    other = KeySet.from_keys([*keys[:5], "x"])
    assert set(done | other) == set(keys) | {"x"}
    assert set(done - other) == set(keys) - set(keys[:5])
    assert done.nbytes == 10 * (len(keys) - 2)  # grid keys 10 bytes each; the odd ones beside


def test_shard_of_is_stable_and_even() -> None:
    keys = [os.urandom(10).hex() for _ in range(8000)]
    counts = [0] * 4
    for key in keys:
        counts[shard_of(key, 4)] += 1
    assert all(1800 < c < 2200 for c in counts), counts
    assert shard_of("0000000000ff00000000", 16) == 0xFF % 16
    assert shard_of("k1", 3) == shard_of("k1", 3) and 0 <= shard_of("k1", 3) < 3
