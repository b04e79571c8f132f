"""Shards of a run: which slice of the grid a worker runs, and where its log lives.

Light on purpose (no Polars, no numpy): the run-directory lock imports it.

Usage: ``Shard.parse("3/16").log_name  # 'shard-03-of-16.jsonl'``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import ConfigError

__all__ = ["SHARD_DIR", "SHARD_NAME", "Shard"]

SHARD_DIR = "results"  # shard logs live in <run dir>/results/, beside the unsharded results.jsonl
SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: one worker's slice of the grid and its own log.

    Usage: ``Shard.parse("3/16").log_name  # 'shard-03-of-16.jsonl'``
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: the index runs from 0 to {self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (K from 0 to N-1); anything else is a ConfigError naming it."""
        k, sep, n = text.partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit() or int(n) < 1:
            raise ConfigError(f"--shard must be K/N with 0 <= K < N (e.g. 3/16), got {text!r}")
        return cls(int(k), int(n))

    @property
    def name(self) -> str:
        return f"shard-{self.index:02d}-of-{self.count:02d}"

    @property
    def log_name(self) -> str:
        return f"{self.name}.jsonl"
