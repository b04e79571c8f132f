"""What a run costs beyond its requests: a rerun with nothing to send, and a fresh run's fixed cost.

Runs ``engine run data/memorisation.toml`` (3,600 tasks against the built-in target) as a user does,
each time in a fresh process and a fresh run directory:

- **fresh**: wall time of the whole command, minus the span its requests took (the log's first
  ``t_start`` to its last ``t_end``): start-up, preparing, starting the target, the report;
- **rerun**: the same command again on the finished run: nothing to send, the log unchanged, so no
  target is started and the report is not rebuilt.

Medians of 5 (``--runs``). The chart script is bundled once beforehand (a machine's first report
pays ~2 s for it; every later one reads it from the cache), and the commands run with Python's
bytecode cache, as Python's default and ``pip install`` give a user: an environment that sets
``PYTHONDONTWRITEBYTECODE`` (this project's sandbox does) would otherwise recompile every engine
module on every command, about 0.1 s. ``--no-bytecode-cache`` measures that case. Prints one
line per measure.

Usage::

    python benchmarks/bench_rerun.py            # median of 5
    python benchmarks/bench_rerun.py --runs 9
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.bench.throughput import request_span

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "memorisation.toml"


def engine_run(out: Path, env: dict[str, str]) -> float:
    """Wall seconds of ``engine run EXAMPLE --out OUT`` in a fresh process: the README's command, its
    progress and summary going to /dev/null."""
    engine = shutil.which("engine") or sys.executable
    argv = [engine] if engine != sys.executable else [sys.executable, "-m", "engine"]
    t = time.perf_counter()
    subprocess.run([*argv, "run", str(EXAMPLE), "--out", str(out)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default 5); medians are printed")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if set")
    args = parser.parse_args(argv)
    from engine.report.vega import vega_bundle

    vega_bundle()
    env = dict(os.environ)
    if not args.no_bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        compileall.compile_dir(REPO / "engine", quiet=1)  # as a first run would leave it
    fresh, beyond, rerun = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            wall = engine_run(out, env)
            fresh.append(wall)
            beyond.append(wall - request_span(out))
            assert (out / "report.html").is_file()
            rerun.append(engine_run(out, env))
    med = statistics.median
    cache = "without" if args.no_bytecode_cache and os.environ.get("PYTHONDONTWRITEBYTECODE") else "with"
    print(f"bytecode cache: {cache}")
    print(f"fresh run of the example (3,600 tasks): {med(fresh):.2f} s wall, of which beyond its requests "
          f"{med(beyond):.2f} s (median of {args.runs}; runs {', '.join(f'{b:.2f}' for b in beyond)})")
    print(f"rerun with everything done: {med(rerun):.2f} s wall (median of {args.runs}; "
          f"runs {', '.join(f'{r:.2f}' for r in rerun)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
