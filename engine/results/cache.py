"""What engine remembers between runs on this machine, to make again rather than to trust blindly.

The user cache (``$XDG_CACHE_HOME/engine``, else ``~/.cache/engine``) holds the chart script the
report inlines and the SHA-256 of model files. A model file's digest names the target of every task
it answers (``gguf:sha256:…``), so it is remembered only together with the file's full ``stat``:
size, modification and change times in ns, inode and device. Rewriting a file changes its change
time, which no call can set back, so a remembered digest is reused only for the very same bytes;
anything else (a copy, an edit, a ``touch``) is hashed again, and a file changed in the last two
seconds is not remembered at all. A cache that cannot be read or written
is no error: the digest is computed as if it were empty.

Usage::

    file_sha256(Path("models/v2/5x-s0.gguf"))   # 0.15 s the first time, a stat call after
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from engine.results.stamps import read_json, write_json_atomic

__all__ = ["file_sha256", "user_cache_dir"]

_DIGESTS = "file-digests.json"
_KEEP = 256  # remembered files; the oldest go first
_SETTLED_NS = 2_000_000_000


def user_cache_dir() -> Path:
    """Where engine keeps what it can make again. Usage: ``user_cache_dir() / "vega-bundle-1.9.0.js"``"""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "engine"


def file_sha256(path: Path, *, cache_dir: Path | None = None) -> str:
    """The hex SHA-256 of a file's content, remembered for the same file unchanged (see the module).

    Raises OSError when the file cannot be read. Usage: ``file_sha256(Path("m.gguf"))[:16]``
    """
    resolved = path.resolve()
    st = resolved.stat()
    seen = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    store = (cache_dir or user_cache_dir()) / _DIGESTS
    remembered = read_json(store)
    if not isinstance(remembered, dict):
        remembered = {}
    entry = remembered.get(str(resolved))
    if isinstance(entry, dict) and entry.get("stat") == seen and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    with resolved.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    # Remembered only for a file that has been still for a while: timestamps tick coarsely (a few ms),
    # so a file written again within the same tick could otherwise keep its stat (git's "racily
    # clean" case); one changed while it was read is not remembered either.
    settled = time.time_ns() - st.st_ctime_ns > _SETTLED_NS
    if settled and resolved.stat().st_ctime_ns == st.st_ctime_ns:
        remembered.pop(str(resolved), None)
        remembered[str(resolved)] = {"stat": seen, "sha256": digest}
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(store, dict(list(remembered.items())[-_KEEP:]))
    return digest
