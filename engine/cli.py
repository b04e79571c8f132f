"""The `engine` command: a thin layer over the library; each command is one call into it.

Exit codes (the same for every command):

- 0: done, every task of this run ok;
- 1: `run`/`replicate` finished, but some tasks failed (how many is printed; their reasons are
  in the log, and the next `engine run` asks them again);
- 2: bad input or refused (one line on stderr naming the problem; nothing written), e.g. the
  run directory is in use by another run;
- 130 / 143 / 129: interrupted by SIGINT (Ctrl-C) / SIGTERM (`timeout`, `kill`) / SIGHUP (the
  terminal closed), i.e. 128 + the signal, after the log was left consistent.

Usage::

    engine run data/memorisation.toml
    engine plan data/memorisation.toml
    engine report runs/memorisation
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from engine import __version__
from engine.errors import ConfigError, EngineError
from engine.interpreter import tune_for_batch
from engine.run.interrupts import Interrupted, Interrupts, interrupt_behind, signal_name

Command = Callable[[argparse.Namespace], int]

EXIT_CODES = (
    "exit codes: 0 ok; 1 some tasks failed (counted); 2 bad input or refused, e.g. the run directory is in use "
    "(one line, nothing written); 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP (log left consistent)"
)


def _run(args: argparse.Namespace) -> int:
    from engine.run.early import early_target

    # A run of its own or a --workers fleet's parent (not a shard, a fleet's worker or a Ray fleet)
    # starts the built-in target, if it needs one, now: it loads on another core while this process
    # loads the run.
    starts_target = not (args.shard or args.ray is not None or args.sim_url or args.fleet)
    with early_target(args.spec, out=args.out, wanted=starts_target) as spawned:
        from engine.results.shards import Shard
        from engine.run.runner import RunOptions, run_experiment

        shard = Shard.parse(args.shard) if args.shard else None
        if shard is not None and args.fresh:
            raise ConfigError("--fresh and --shard do not go together: start fresh with --workers, or another --out")
        if args.ray is not None and args.workers != 1:
            raise ConfigError("--ray and --workers do not go together (--ray starts its own workers)")
        options = RunOptions(
            out=args.out, fresh=args.fresh, retry_failed=not args.no_retry_failed, quiet=args.quiet,
            fsync=_fsync(args.fsync), report=not args.no_report, write_ahead=args.write_ahead,
            shard=shard, sim_url=args.sim_url, fleet=args.fleet,
        )
        if args.ray is not None:
            from engine.run.ray_fleet import run_ray

            summary = run_ray(args.spec, options, address=args.ray, actors=args.actors)
        elif args.workers != 1:
            from engine.run.workers import run_workers

            summary = run_workers(args.spec, options, workers=args.workers, spawned=spawned)
        else:
            summary = run_experiment(args.spec, options=options, spawned=spawned)
    if options.fleet is None:  # a fleet's worker: its parent prints the fleet's summary
        print(summary.render())
    _say_failed(summary.failed, summary.exit_code)
    return summary.exit_code


def _say_failed(failed: int, exit_code: int) -> None:
    """Exit code 1 gets its reason on stderr, where a script's log sees it."""
    if exit_code == 1:
        print(f"engine: {failed:,} tasks failed this run (reasons in the log); `engine run` again asks them again",
              file=sys.stderr)


def _fsync(value: str | None) -> str | int | None:
    if value is None or value in ("never", "always"):
        return value
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--fsync must be never, always or a record count, got {value!r} (a count is at least 1)")
    return int(value)


def _plan(args: argparse.Namespace) -> int:
    from engine.run.plan import make_plan

    print(make_plan(args.spec).render())
    return 0


def _sim(args: argparse.Namespace) -> int:
    from engine.sim.__main__ import main as sim_main

    argv = ["--port", str(args.port), "--host", args.host]
    if args.config:
        argv += ["--config-file", str(args.config)]
    return sim_main(argv)


def _report(args: argparse.Namespace) -> int:
    from engine.report.write import main_report

    return main_report(args.run_dir, by=args.by, fmt=args.format, seed=args.seed, all_records=args.all)


def _import(args: argparse.Namespace) -> int:
    from engine.study.seedio import import_seed

    out = import_seed(args.csv, args.out, scorer=args.rescore)
    print(f"imported {args.csv} into {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """The CSV to ``--out``, or to stdout without it (``> x.csv`` works); what was written goes to stderr."""
    from engine.study.seedio import export_seed_csv, render_seed_csv

    if args.out is not None:
        print(f"wrote {export_seed_csv(args.run_dir, args.out)}", file=sys.stderr)
        return 0
    table = render_seed_csv(args.run_dir)
    sys.stdout.flush()
    # As bytes: the combined layout's CRLF line ends must reach the file unchanged on every platform.
    sys.stdout.buffer.write(table.text.encode("utf-8"))
    sys.stdout.buffer.flush()
    print(f"wrote the CSV to stdout ({table.describe()})", file=sys.stderr)
    return 0


def _data_finetune(args: argparse.Namespace) -> int:
    from engine.study.finetune import build_finetune_sets

    try:
        examples = tuple(int(x) for x in args.examples.split(","))
    except ValueError:
        raise ConfigError(f"--examples must be whole numbers separated by commas, got {args.examples!r}") from None
    paths = build_finetune_sets(args.facts, examples=examples, out_dir=args.out, seed=args.seed,
                                holdout=args.holdout, threshold=args.threshold, shuffle=args.shuffled)  # fmt: skip
    for n, path in sorted(paths.items()):
        print(f"{n:>3} examples per fact: {path}")
    return 0


def _data_leakage(args: argparse.Namespace) -> int:
    from engine.study.leakage import check_sets

    print(check_sets(args.train, args.questions, threshold=args.threshold, max_similarity=args.max_similarity))
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.local.progress import TrainProgress
    from engine.local.train import default_settings, train

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    bf16 = {"auto": None, "fp32": False, "bf16": True}[args.precision]
    # auto (None) keeps the base's default: the CPU decides for smollm2; tiny is fp32, too small to gain.
    settings = default_settings(args.base, epochs=args.epochs, bf16=bf16)
    result = train(
        args.dataset, out=args.out, settings=settings, threads=args.threads,
        progress=TrainProgress.to_stream(sys.stdout),
    )
    print(result, flush=True)
    return 0


def _replicate(args: argparse.Namespace) -> int:
    from engine.study.replicate import replicate

    result = replicate(args.spec, quiet=args.quiet)
    print(result)
    if result.run is None:
        return 0
    _say_failed(result.run.failed, result.run.exit_code)
    return int(result.run.exit_code)


def _bench(args: argparse.Namespace) -> int:
    from engine.bench.throughput import main_bench

    return main_bench(tasks=args.tasks, concurrency=args.concurrency, latency_ms=args.latency_ms)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = argparse.ArgumentParser(
        prog="engine", description="Async, high-throughput evaluation of language models.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--version", action="version", version=f"engine {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_experiment_commands(sub)
    _add_data_commands(sub)
    _add_study_commands(sub)
    return p


Subparsers = argparse._SubParsersAction  # argparse names no public type for it


def _add_experiment_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """run, plan, sim, report: the evaluation itself."""
    run = sub.add_parser("run", help="run (or resume) an experiment spec", epilog=EXIT_CODES)
    run.add_argument("spec", type=Path, help="the experiment spec (TOML)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>)")
    run.add_argument("--fresh", action="store_true", help="start a new log; the old one is renamed aside")
    run.add_argument("--no-retry-failed", action="store_true", help="on resume, do not ask failed tasks again")
    run.add_argument("--fsync", help="never | always | N (fsync every N records); overrides the spec")
    run.add_argument("--quiet", action="store_true", help="no live progress, only the summary")
    run.add_argument("--write-ahead", action="store_true",
                     help="journal each request before sending, so a resume after a crash says how many were in flight")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--shard", metavar="K/N", help="run only shard K (0..N-1) of N, into its own log (job arrays)")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="N processes on this machine: one grid, one quota, one result (default 1)")
    run.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster (an address, or auto); needs the ray extra")
    run.add_argument("--actors", type=int, default=2, metavar="N", help="with --ray: shard actors (default 2)")
    run.add_argument("--sim-url", help=argparse.SUPPRESS)  # a fleet's built-in target, started by its parent
    run.add_argument("--fleet", help=argparse.SUPPRESS)  # the fleet coordinator's socket, for a worker
    run.set_defaults(func=_run)

    plan = sub.add_parser("plan", help="grid size, estimated tokens and time; sends nothing")
    plan.add_argument("spec", type=Path, help="the experiment spec (TOML)")
    plan.set_defaults(func=_plan)

    sim = sub.add_parser("sim", help="serve the built-in OpenAI-compatible target (a simulation)")
    sim.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--config", type=Path, help="sim config, JSON or TOML")
    sim.set_defaults(func=_sim)

    report = sub.add_parser("report", help="error rates with confidence intervals, tables and charts")
    report.add_argument("run_dir", type=Path, help="the run directory (or its results.jsonl)")
    report.add_argument("--by", help="comma-separated fields or tags to group by, e.g. model,difficulty")
    report.add_argument("--format", default="table", choices=("table", "md", "json", "csv", "html"),
                        help="output format (default table; json and csv only print; html writes report.html)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    report.add_argument("--all", action="store_true",
                        help="include records outside the run's current grid (printed only; report.md is not rewritten)")
    report.set_defaults(func=_report)


def _add_data_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """import, export, data: logs in and out of other tools' formats, fine-tuning data."""
    imp = sub.add_parser("import", help="import another tool's results as an engine log")
    imp_sub = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    seed = imp_sub.add_parser("seed", help="the original experiment's Results CSV")
    seed.add_argument("csv", type=Path, help="the original's Results CSV (results.csv or Results-all-v2.csv)")
    seed.add_argument("--out", type=Path, required=True, help="the run directory to create")
    seed.add_argument("--rescore", choices=("number", "seed"), help="re-score replies instead of the CSV's Correct")
    seed.set_defaults(func=_import)

    export = sub.add_parser("export", help="write a log in another tool's format")
    export.add_argument("run_dir", type=Path, help="the run directory to export")
    export.add_argument("--format", required=True, choices=("seed-csv",), help="the format to write")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.set_defaults(func=_export)

    data = sub.add_parser("data", help="build and check fine-tuning data")
    data_sub = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    ft = data_sub.add_parser("finetune", help="write nested fine-tuning sets, evaluation questions held out")
    ft.add_argument("facts", type=Path, help="the fact CSV the sets are built from")
    ft.add_argument("--examples", default="5,10,25,50", help="examples per fact of each set (default 5,10,25,50)")
    ft.add_argument("--out", type=Path, required=True, help="directory to write the sets into")
    ft.add_argument("--seed", type=int, default=0, help="seed of the wording choice (default 0)")
    ft.add_argument("--holdout", choices=("exact", "family"), default="exact",
                    help="exact: no evaluation wording verbatim or as a template (default); family: also drop every "
                         "template family within --threshold similarity of an evaluation question")  # fmt: skip
    ft.add_argument("--threshold", type=float, default=0.85, help="near-duplicate similarity (default 0.85)")
    ft.add_argument("--shuffled", action="store_true",
                    help="the control: each object trained with another object's number (train-N-shuffled.jsonl)")
    ft.set_defaults(func=_data_finetune)
    leak = data_sub.add_parser("leakage", help="find evaluation questions inside training data")
    leak.add_argument("train", type=Path, nargs="+", help="the training data (JSONL), one or more sets")
    leak.add_argument("questions", type=Path, help="the evaluation questions")
    leak.add_argument("--threshold", type=float, default=0.85,
                      help="similarity at or above which a training question is a near-duplicate (default 0.85)")
    leak.add_argument("--max-similarity", type=float, default=None, metavar="S",
                      help="refuse (exit 2) when any set has a training question at similarity S or more")
    leak.set_defaults(func=_data_leakage)


def _add_study_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """train, replicate, bench: local models, the whole study, throughput."""
    train = sub.add_parser("train", help="fine-tune a small model on the CPU and write a GGUF")
    train.add_argument("dataset", type=Path, help="the fine-tuning set (JSONL)")
    train.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    train.add_argument("--base", default="smollm2", choices=("smollm2", "tiny"),
                       help="smollm2 (SmolLM2-135M-Instruct) or tiny (random init, for tests)")
    train.add_argument("--epochs", type=int, help="default: the base's own (3 for smollm2, 40 for tiny)")
    train.add_argument("--threads", type=int, help="torch threads (default: every core this process may use)")
    train.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="auto (default): bf16 only where the CPU runs it natively and measurably faster")
    train.set_defaults(func=_train)

    rep = sub.add_parser("replicate", help="the whole study: build sets, train, serve, evaluate, report")
    rep.add_argument("spec", type=Path, help="the spec with a [replication] table")
    rep.add_argument("--quiet", action="store_true", help="no live progress, only the summaries")
    rep.set_defaults(func=_replicate)

    bench = sub.add_parser("bench", help="measure throughput on this machine against the built-in target")
    bench.add_argument("--tasks", type=int, default=20_000, help="requests per contestant (default 20000)")
    bench.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    bench.add_argument("--latency-ms", type=float, default=0.0, help="the target's added latency (default 0)")
    bench.set_defaults(func=_bench)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `engine` console script. Usage: ``main(["plan", "data/memorisation.toml"])``"""
    try:
        # Caught from the start, so a signal while the run's modules load is an exit code, not a traceback.
        with Interrupts():
            args = parser().parse_args(argv)
            return int(args.func(args))
    except EngineError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # a signal before the run could stop gracefully: nothing half-written
        print(f"engine: interrupted ({signal_name(exc.signum)})", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output left early (`engine report ... | head`): no traceback for that.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if (interrupt := interrupt_behind(exc)) is None:
            raise
        print(f"engine: interrupted ({signal_name(interrupt.signum)})", file=sys.stderr)
        return interrupt.exit_code


def console() -> NoReturn:
    """The console script (``engine ...``): :func:`main`, then an exit that skips tearing down the interpreter.

    The garbage collector is set for a batch process first (:mod:`engine.interpreter`: about 0.1 s
    less start-up for a run). Freeing every module (Polars, NumPy, aiohttp) at exit costs about
    0.13 s after the work is done and every file is closed. Skipped only when someone still needs
    the slow way: a thread that must be joined, or Ray, whose exit hook stops the local instance
    ``ray.init`` started.
    Usage: ``[project.scripts] engine = "engine.cli:console"``
    """
    tune_for_batch()
    code = main()
    if "ray" in sys.modules or threading.active_count() > 1:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass  # the reader left, or a stream was closed: nothing more can reach it either way
    os._exit(code)


if __name__ == "__main__":
    console()
