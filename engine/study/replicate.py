"""Re-run the original study end to end on local models: sets, leakage check, training, evaluation.

The spec is an ordinary experiment spec (see ``data/replication.toml``) whose
fine-tuned models are local GGUF files, plus a ``[replication]`` table saying
how to build them:

.. code-block:: toml

    [replication]
    facts = "facts.csv"            # facts to train on (default: the spec's questions)
    models = { "ft-5x" = 5, "ft-10x" = 10 }  # model label -> wordings per fact
    sets_dir = "../models/sets"    # where the training JSONL go (default: beside the first model)
    base = "smollm2"               # or "tiny"
    epochs = 3                     # optional: lr, batch_size, seed, bf16, file_type, threads

Each named model is trained into the file its ``gguf`` points at, unless that
file already holds a model trained from the same data and settings (the key
is stored in the GGUF). The other models of the spec (e.g. ``gguf = "smollm2"``,
the untrained control) are evaluated as they are.

Usage::

    result = replicate(Path("data/replication.toml"))
    print(result)

or, to only build the models (e.g. in the background): ``python -m engine.study.replicate SPEC --train-only``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError, SpecError, TrainError
from engine.local.gguf import engine_metadata
from engine.local.train import (
    BASES,
    TrainSettings,
    available_cores,
    default_settings,
    resolve_precision,
    train,
    train_key,
)
from engine.results.lock import RunLock
from engine.run.interrupts import Interrupted, Interrupts
from engine.study.finetune import DEFAULT_SYSTEM, build_finetune_report
from engine.study.leakage import LeakageReport, find_leakage

__all__ = ["ModelBuild", "ReplicationPlan", "ReplicationResult", "build_models", "load_plan", "replicate"]

_KEYS = frozenset(
    {"facts", "models", "sets_dir", "base", "epochs", "lr", "batch_size", "seed", "bf16", "file_type", "threads"}
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicationPlan:
    """The checked ``[replication]`` table of a spec.

    Usage: ``plan = load_plan(Path("data/replication.toml")); plan.models``
    """

    spec_path: Path
    facts: Path
    questions: Path
    sets_dir: Path
    models: tuple[tuple[str, int, Path], ...]  # (label, wordings per fact, GGUF path)
    settings: TrainSettings
    threads: int | None = None  # None: every core, one model at a time (side by side: no clear gain, results.md)
    system: str = DEFAULT_SYSTEM


def _fail(key: str, why: str) -> SpecError:
    return SpecError(f"[replication] {key}: {why}")


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    # bool is an int in Python; a `true` epoch count is a mistake, not 1.
    if isinstance(value, bool) and kind is not bool:
        raise _fail(key, f"must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    if not isinstance(value, kind):
        raise _fail(key, f"must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    return value


def load_plan(spec_path: Path) -> ReplicationPlan:
    """Load ``spec_path`` and check its ``[replication]`` table; raise SpecError on a bad value.

    Usage: ``load_plan(Path("data/replication.toml")).settings.epochs``
    """
    from engine.experiment.spec import load_spec

    spec = load_spec(spec_path)
    table = spec.replication
    if table is None:
        raise SpecError(f"{spec_path}: no [replication] table; this spec is not a replication")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise _fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    here = spec.path.parent
    facts_name = _typed(table, "facts", str)
    facts = here / facts_name if facts_name else spec.questions
    wanted = _typed(table, "models", dict)
    if not wanted:
        raise _fail("models", "must map at least one model label to a number of wordings per fact")
    by_label = {m.name: m for m in spec.models}
    models = []
    for label, count in wanted.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _fail(f"models.{label}", f"must be a positive number of wordings per fact, got {count!r}")
        model = by_label.get(label)
        if model is None:
            raise _fail(f"models.{label}", "no [[models]] entry with this name")
        if model.gguf is None or model.gguf.strip().lower() == "smollm2":
            raise _fail(f"models.{label}", 'its [[models]] entry needs gguf = "<path of the file to train>"')
        models.append((label, count, (here / model.gguf).resolve()))
    sets_name = _typed(table, "sets_dir", str)
    sets_dir = (here / sets_name).resolve() if sets_name else models[0][2].parent / "sets"
    base = _typed(table, "base", str, "smollm2")
    if base not in BASES:
        raise _fail("base", f"must be one of {', '.join(BASES)}, got {base!r}")
    threads = _typed(table, "threads", int)
    if threads is not None and threads < 1:
        raise _fail("threads", f"must be at least 1, got {threads}")
    lr = _typed(table, "lr", (int, float))
    try:
        settings = default_settings(
            base,
            epochs=_typed(table, "epochs", int),
            lr=float(lr) if lr is not None else None,
            batch_size=_typed(table, "batch_size", int),
            seed=_typed(table, "seed", int),
            bf16=_typed(table, "bf16", bool),
            file_type=_typed(table, "file_type", str),
        )
    except TrainError as exc:
        raise SpecError(f"[replication]: {exc}") from exc
    return ReplicationPlan(
        spec_path=spec.path,
        facts=facts,
        questions=spec.questions,
        sets_dir=sets_dir,
        models=tuple(models),
        settings=settings,
        threads=threads,
        system=spec.system or DEFAULT_SYSTEM,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelBuild:
    """One trained (or reused) model of a replication.

    Usage: ``f"{b.label}: {b.train_seconds:.0f} s ({'reused' if b.reused else 'trained'})"``
    """

    label: str
    examples_per_fact: int
    dataset: Path
    gguf: Path
    kind: str
    reused: bool
    train_seconds: float
    final_loss: float | None
    key: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicationResult:
    """Everything a replication did; ``str()`` is what the command prints.

    Usage: ``print(replicate(Path("data/replication.toml")))``
    """

    plan: ReplicationPlan
    leakage: tuple[LeakageReport, ...]
    builds: tuple[ModelBuild, ...]
    build_seconds: float
    run: Any = None  # engine.run.runner.RunSummary, None when only the models were built
    eval_seconds: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def render(self) -> str:
        """Plain-text summary: leakage, one line per model, then the evaluation's summary."""
        lines = ["leakage check (evaluation questions in training data):"]
        for report in self.leakage:
            found = sum(sum(row.values()) for row in report.counts().values())
            lines.append(f"  {Path(report.train_path).name}: {'clean' if found == 0 else f'{found} found'}")
        lines.append(f"models ({self.plan.settings.base}, {self.plan.settings.epochs} epochs):")
        for b in self.builds:
            loss = f"{b.final_loss:.4f}" if b.final_loss is not None else "n/a"
            lines.append(
                f"  {b.label:<10} {b.examples_per_fact:>3}/fact  {b.kind:<18} train {b.train_seconds:>7.1f} s"
                f"  final loss {loss}  {'reused' if b.reused else 'trained'}  {b.gguf}"
            )
        lines.append(f"building took {self.build_seconds:.1f} s")
        if self.run is not None:
            lines.append(f"evaluation took {self.eval_seconds or 0.0:.1f} s")
            lines.append(self.run.render())
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _reusable(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        meta = engine_metadata(path)
    except EngineError:
        return None
    return meta if meta.get("engine.train_key") == key else None


def _prefixed(say: Callable[[str], None], label: str) -> Callable[[str], None]:
    return lambda line: say(f"{label}: {line}")


def build_models(
    plan: ReplicationPlan, *, log: Callable[[str], None] | None = None
) -> tuple[tuple[LeakageReport, ...], tuple[ModelBuild, ...]]:
    """Write the sets, refuse any leakage, and train every model not already built.

    Usage: ``leakage, builds = build_models(load_plan(spec_path), log=print)``
    """
    say = log or (lambda _line: None)
    counts = sorted({n for _, n, _ in plan.models})
    sets = build_finetune_report(
        plan.facts, examples=counts, out_dir=plan.sets_dir, system=plan.system, seed=plan.settings.seed
    )
    say(str(sets))
    reports = []
    for n in counts:
        for questions in dict.fromkeys((plan.questions, plan.facts)):
            report = find_leakage(sets.paths[n], questions)
            if not report.clean:
                raise TrainError(f"{sets.paths[n]} contains evaluation questions of {questions}; refusing to train")
            reports.append(report)
    builds = []
    threads = plan.threads or available_cores()
    settings, choice = resolve_precision(plan.settings, threads=threads)
    say(f"precision {choice.reason}")
    for label, n, gguf in plan.models:
        dataset = sets.paths[n]
        key = train_key(dataset, settings)
        meta = _reusable(gguf, key)
        if meta is not None:
            say(f"{label}: reusing {gguf} (same data and settings)")
            builds.append(
                ModelBuild(
                    label=label, examples_per_fact=n, dataset=dataset, gguf=gguf,
                    kind=str(meta.get("engine.model_kind")), reused=True,
                    train_seconds=float(meta.get("engine.train_seconds", 0.0)),
                    final_loss=meta.get("engine.final_loss"), key=key,
                )
            )
            continue
        say(f"{label}: training on {dataset.name} ({settings.base}, {threads} thread(s))")
        result = train(dataset, out=gguf, settings=settings, threads=threads, log=_prefixed(say, label))
        say(f"{label}: done in {result.seconds:.1f} s -> {gguf} ({result.kind})")
        builds.append(
            ModelBuild(
                label=label, examples_per_fact=n, dataset=dataset, gguf=gguf, kind=result.kind,
                reused=False, train_seconds=result.seconds, final_loss=result.epoch_losses[-1], key=key,
            )
        )
    return tuple(reports), tuple(builds)


def replicate(
    spec_path: Path, *, quiet: bool = False, train_only: bool = False, out: Path | None = None
) -> ReplicationResult:
    """Build the sets, train the models (reusing built ones), evaluate and report.

    ``out`` is the run directory (default ``runs/<name>``); ``train_only`` skips the evaluation.
    The run directory is locked for the whole of it, training included: a second replicate, or an
    ``engine run`` of the same spec, is refused instead of evaluating models while they are rebuilt.

    Usage: ``print(replicate(Path("data/replication.toml")))``
    """

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    plan = load_plan(Path(spec_path))
    from engine.experiment.spec import load_spec
    from engine.run.runner import RunOptions, run_dir_of, run_experiment

    with Interrupts(), RunLock(run_dir_of(load_spec(plan.spec_path), out)):
        started = time.monotonic()
        reports, builds = build_models(plan, log=say)
        build_seconds = time.monotonic() - started
        if train_only:
            return ReplicationResult(plan=plan, leakage=reports, builds=builds, build_seconds=build_seconds)
        started = time.monotonic()
        options = RunOptions(out=out, quiet=quiet, locked_by_caller=True)
        summary = run_experiment(plan.spec_path, options=options)
    return ReplicationResult(
        plan=plan, leakage=reports, builds=builds, build_seconds=build_seconds,
        run=summary, eval_seconds=time.monotonic() - started,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.study.replicate SPEC [--train-only] [--quiet]``: the replication without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m engine.study.replicate", description=main.__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--train-only", action="store_true", help="build the models, do not evaluate")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = replicate(args.spec, quiet=args.quiet, train_only=args.train_only)
    except EngineError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"engine: interrupted ({exc})", file=sys.stderr)
        return exc.exit_code
    print(result)
    return 0 if result.run is None else int(result.run.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
