"""Compact sets of task keys.

A task key is 20 hex characters (80 bits of a hash, :mod:`engine.experiment.grid`). As Python
strings in a set, a million keys cost about 450 MB; a resume of a 100-million-task grid would not
fit one machine. :class:`KeySet` holds them as 10-byte binary values in one sorted numpy array
(10 bytes a key; 10 million keys are 100 MB), answers ``key in keys`` by binary search and a
whole batch at once with :meth:`KeySet.contains_many` (what the lazy grid uses). Keys of another
shape (an imported log, a test's "k1") go into a small ordinary set beside the array.

Usage::

    done = KeySet.from_keys(["0123456789abcdef0123", "k1"])
    "k1" in done, len(done), done.contains_many(batch)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

KEY_HEX = 20  # the grid's keys: KEY_BYTES (10) as hex
_DTYPE = np.dtype("S10")  # fixed-width bytes: sorts and compares bytewise, no per-key object
_HEX = frozenset("0123456789abcdef")


def _is_hex_key(key: str) -> bool:
    return len(key) == KEY_HEX and _HEX.issuperset(key)


def _packed(keys: Sequence[str]) -> np.ndarray[Any, np.dtype[Any]] | None:
    """``keys`` (all grid-shaped) as one S10 array; None when any is not 20 lower-case hex characters."""
    if not keys:
        return np.empty(0, dtype=_DTYPE)
    joined = "".join(keys)
    if len(joined) != KEY_HEX * len(keys):
        return None
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        return None
    if len(raw) * 2 != len(joined) or joined != joined.lower():
        return None  # spaces, or upper-case hex: another string than any key the grid makes
    return np.frombuffer(raw, dtype=_DTYPE)


class KeySet(AbstractSet[str]):
    """An immutable set of task keys, 10 bytes a grid key; a ``collections.abc.Set``.

    Usage: ``KeySet.from_keys(keys)``; ``key in done``; ``done | other``; ``done.contains_many(batch)``
    """

    __slots__ = ("_array", "_other")

    def __init__(self, array: np.ndarray[Any, np.dtype[Any]], other: frozenset[str] = frozenset()) -> None:
        """``array``: sorted, unique S10 keys (see :meth:`from_arrays`); ``other``: keys of another shape."""
        self._array = array
        self._other = other

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> KeySet:
        """A set of any keys. Usage: ``KeySet.from_keys(["0123456789abcdef0123"])``"""
        builder = KeySetBuilder()
        builder.add(list(keys))
        return builder.build()

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> KeySet:  # type: ignore[override]  # the Set mixins build with it
        return cls.from_keys(it)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if not _is_hex_key(key):
            return key in self._other
        value = np.frombuffer(bytes.fromhex(key), dtype=_DTYPE)[0]
        i = int(np.searchsorted(self._array, value))
        return i < len(self._array) and self._array[i] == value

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        """Membership of each key, one binary search over the batch (the lazy grid's fast path)."""
        packed = _packed(keys)
        if packed is None:
            return [key in self for key in keys]
        if not len(self._array):
            return [False] * len(keys) if not self._other else [key in self._other for key in keys]
        at = np.searchsorted(self._array, packed)
        found = self._array[np.minimum(at, len(self._array) - 1)] == packed
        return found.tolist()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._array) + len(self._other)

    def __iter__(self) -> Iterator[str]:
        for value in self._array:
            yield bytes(value).ljust(10, b"\0").hex()  # numpy drops trailing zero bytes of an S value
        yield from self._other

    def __or__(self, other: AbstractSet[Any]) -> KeySet:
        if isinstance(other, KeySet):
            return KeySet(np.union1d(self._array, other._array), self._other | other._other)
        return KeySet._from_iterable([*self, *other])

    def __sub__(self, other: AbstractSet[Any]) -> KeySet:
        if isinstance(other, KeySet):
            return KeySet(np.setdiff1d(self._array, other._array, assume_unique=True), self._other - other._other)
        return KeySet._from_iterable(k for k in self if k not in other)

    def __hash__(self) -> int:
        return self._hash()

    @property
    def nbytes(self) -> int:
        """Memory held by the array (the other keys aside). Usage: ``done.nbytes / len(done)``"""
        return int(self._array.nbytes)


class KeySetBuilder:
    """Collects keys batch by batch (a log block at a time), then sorts once: :meth:`build`.

    Usage: ``b = KeySetBuilder(); b.add(keys); done = b.build()``
    """

    def __init__(self) -> None:
        self._parts: list[np.ndarray[Any, np.dtype[Any]]] = []
        self._other: set[str] = set()

    def add(self, keys: Sequence[str]) -> None:
        packed = _packed(keys)
        if packed is None:
            grid_keys = [k for k in keys if _is_hex_key(k)]
            self._other.update(k for k in keys if not _is_hex_key(k))
            packed = _packed(grid_keys)
            assert packed is not None
        if len(packed):
            self._parts.append(packed.copy())  # frombuffer views a temporary bytes object

    def build(self) -> KeySet:
        array = np.unique(np.concatenate(self._parts)) if self._parts else np.empty(0, dtype=_DTYPE)
        self._parts = []
        return KeySet(array, frozenset(self._other))
