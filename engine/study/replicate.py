"""Re-run the original study end to end on local models: sets, leakage check, training, evaluation.

The spec is an ordinary experiment spec (see ``data/replication.toml``) whose
fine-tuned models are local GGUF files, plus a ``[replication]`` table saying
how to build them:

.. code-block:: toml

    [replication]
    facts = "facts.csv"            # facts to train on (default: the spec's questions)
    models = { "ft-5x" = 5, "ft-10x" = 10 }  # model label -> wordings per fact, or a table:
    # "5x-s1" = { examples = 5, seed = 1 }          a training seed of its own (same set)
    # "shuffled-10x" = { examples = 10, shuffle = true }  the control: numbers shuffled across objects
    sets_dir = "../models/sets"    # where the training JSONL go (default: beside the first model)
    holdout = "family"             # "exact" (default) or "family": no near-duplicate of an evaluation question
    threshold = 0.85               # near-duplicate similarity refused in every set (with holdout = "family")
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
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

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
from engine.study.controls import ChanceLevel, chance_level
from engine.study.estimate import plan_lines, render_plan
from engine.study.finetune import DEFAULT_SYSTEM, HOLDOUTS, build_finetune_report
from engine.study.leakage import LeakageReport, find_leakage, read_facts
from engine.study.similarity import DEFAULT_THRESHOLD

__all__ = [
    "TRAINING_FILE", "ModelBuild", "PlannedModel", "ReplicationPlan", "ReplicationResult", "build_models",
    "build_sets", "load_plan", "replicate", "write_training_record",
]  # fmt: skip

_KEYS = frozenset(
    {"facts", "models", "sets_dir", "base", "epochs", "lr", "batch_size", "seed", "bf16", "file_type", "threads",
     "holdout", "threshold"}
)
_MODEL_KEYS = frozenset({"examples", "seed", "shuffle"})


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedModel:
    """One model a replication trains: its label, set, training seed and GGUF file.

    Usage: ``PlannedModel(label="5x-s1", examples=5, seed=1, shuffle=False, gguf=Path("m/5x-s1.gguf"))``
    """

    label: str
    examples: int
    seed: int
    shuffle: bool
    gguf: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicationPlan:
    """The checked ``[replication]`` table of a spec.

    Usage: ``plan = load_plan(Path("data/replication.toml")); plan.models``
    """

    spec_path: Path
    facts: Path
    questions: Path
    sets_dir: Path
    models: tuple[PlannedModel, ...]
    settings: TrainSettings  # the seed here seeds the sets' wordings and is each model's default training seed
    threads: int | None = None  # None: every core, one model at a time (side by side: no clear gain, results.md)
    system: str = DEFAULT_SYSTEM
    holdout: str = "exact"
    threshold: float = DEFAULT_THRESHOLD
    evaluated: tuple[str, ...] = ()  # every model label of the spec, trained or not
    grid_per_model: int = 0  # tasks per model: questions x temperatures x repeats

    def settings_of(self, model: PlannedModel) -> TrainSettings:
        """The training settings of one model: the plan's, with the model's own seed."""
        return replace(self.settings, seed=model.seed)

    def settings_of_label(self, label: str) -> TrainSettings:
        """:meth:`settings_of` the model labelled ``label``."""
        return self.settings_of(next(m for m in self.models if m.label == label))


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
    data_seed = _typed(table, "seed", int, 0)
    models = [_planned(label, entry, by_label, here, data_seed) for label, entry in wanted.items()]
    sets_name = _typed(table, "sets_dir", str)
    sets_dir = (here / sets_name).resolve() if sets_name else models[0].gguf.parent / "sets"
    holdout = _typed(table, "holdout", str, "exact")
    if holdout not in HOLDOUTS:
        raise _fail("holdout", f"must be one of {', '.join(HOLDOUTS)}, got {holdout!r}")
    threshold = float(_typed(table, "threshold", (int, float), DEFAULT_THRESHOLD))
    if not 0.0 < threshold <= 1.0:
        raise _fail("threshold", f"must be in (0, 1], got {threshold:g}")
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
        holdout=holdout,
        threshold=threshold,
        evaluated=tuple(m.name for m in spec.models),
        grid_per_model=_questions_of(spec) * len(spec.temperatures) * spec.repeats,
    )


def _questions_of(spec: Any) -> int:
    from engine.experiment.questions import load_questions

    return len(load_questions(spec.questions))


def _planned(label: str, entry: Any, by_label: Mapping[str, Any], here: Path, data_seed: int) -> PlannedModel:
    """One ``models`` entry: a number of wordings, or ``{examples, seed, shuffle}``; checked against [[models]]."""
    table = entry if isinstance(entry, dict) else {"examples": entry}
    unknown = sorted(set(table) - _MODEL_KEYS)
    if unknown:
        raise _fail(f"models.{label}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_MODEL_KEYS))})")
    count = table.get("examples")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise _fail(f"models.{label}", f"must be a positive number of wordings per fact, got {count!r}")
    seed = table.get("seed", data_seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(f"models.{label}.seed", f"must be a whole number >= 0, got {seed!r}")
    shuffle = table.get("shuffle", False)
    if not isinstance(shuffle, bool):
        raise _fail(f"models.{label}.shuffle", f"must be true or false, got {shuffle!r}")
    model = by_label.get(label)
    if model is None:
        raise _fail(f"models.{label}", "no [[models]] entry with this name")
    if model.gguf is None or model.gguf.strip().lower() == "smollm2":
        raise _fail(f"models.{label}", 'its [[models]] entry needs gguf = "<path of the file to train>"')
    return PlannedModel(label=label, examples=count, seed=seed, shuffle=shuffle, gguf=(here / model.gguf).resolve())


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
    seed: int = 0
    shuffle: bool = False


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
    chance: tuple[ChanceLevel, ...] = ()

    def render(self) -> str:
        """Plain-text summary: leakage, one line per model, then the evaluation's summary."""
        lines = ["leakage check (evaluation questions in training data):"]
        for report in self.leakage:
            found = sum(sum(row.values()) for row in report.counts().values())
            near = sum(report.near_counts().values())
            lines.append(
                f"  {Path(report.train_path).name}: {'clean' if found == 0 else f'{found} found'}, "
                f"{near} near-duplicate(s) at similarity >= {self.plan.threshold:g} (highest "
                f"{max(report.max_similarity().values()):.3f})"
            )
        lines.append(f"models ({self.plan.settings.base}, {self.plan.settings.epochs} epochs):")
        for b in self.builds:
            loss = f"{b.final_loss:.4f}" if b.final_loss is not None else "n/a"
            lines.append(
                f"  {b.label:<12} {b.examples_per_fact:>3}/fact{' shuffled' if b.shuffle else ''}  seed {b.seed}"
                f"  {b.kind:<18} train {b.train_seconds:>7.1f} s  final loss {loss}"
                f"  {'reused' if b.reused else 'trained'}  key {b.key}  {b.gguf}"
            )
        for c in self.chance:
            lines.append(
                f"chance level, {c.set_name}: always answering its most frequent number ({c.number}, "
                f"{c.times}x) is right for {c.share:.2%} of the grid"
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


def build_sets(plan: ReplicationPlan, *, log: Callable[[str], None] | None = None) -> dict[tuple[int, bool], Path]:
    """Write every set the plan's models need ({(examples, shuffled): path}) and refuse any leakage.

    With ``holdout = "family"`` a near-duplicate at the plan's threshold is refused too.
    Usage: ``sets = build_sets(load_plan(spec_path))``
    """
    say = log or (lambda _line: None)
    paths: dict[tuple[int, bool], Path] = {}
    for shuffle in sorted({m.shuffle for m in plan.models}):
        counts = sorted({m.examples for m in plan.models if m.shuffle == shuffle})
        sets = build_finetune_report(
            plan.facts, examples=counts, out_dir=plan.sets_dir, system=plan.system, seed=plan.settings.seed,
            holdout=plan.holdout, threshold=plan.threshold, shuffle=shuffle,
        )
        say(str(sets))
        paths.update({(n, shuffle): path for n, path in sets.paths.items()})
    return paths


def check_sets_of(plan: ReplicationPlan, paths: Mapping[tuple[int, bool], Path]) -> tuple[LeakageReport, ...]:
    """The leakage report of every set against the evaluation questions; TrainError on any leak."""
    reports = []
    strict = plan.holdout == "family"
    for path in paths.values():
        for questions in dict.fromkeys((plan.questions, plan.facts)):
            report = find_leakage(path, questions, threshold=plan.threshold)
            if not report.clean:
                raise TrainError(f"{path} contains evaluation questions of {questions}; refusing to train")
            if strict and report.near:
                worst = max(report.near, key=lambda n: n.similarity)
                raise TrainError(
                    f"{path}: {worst.training_text!r} is {worst.similarity:.3f} similar to the {worst.difficulty} "
                    f"question of {worst.object}; refusing to train (holdout = \"family\")"
                )
            reports.append(report)
    return tuple(reports)


def build_models(
    plan: ReplicationPlan, *, log: Callable[[str], None] | None = None
) -> tuple[tuple[LeakageReport, ...], tuple[ModelBuild, ...]]:
    """Write the sets, refuse any leakage, and train every model not already built (same train key).

    Usage: ``leakage, builds = build_models(load_plan(spec_path), log=print)``
    """
    say = log or (lambda _line: None)
    paths = build_sets(plan, log=say)
    reports = check_sets_of(plan, paths)
    # The precision is decided once, before the keys: a model's train key names the one it was trained in.
    threads = plan.threads or available_cores()
    resolved, choice = resolve_precision(plan.settings, threads=threads)
    say(f"precision {choice.reason}")
    plan = dataclasses.replace(plan, settings=resolved)
    keys = {m.label: train_key(paths[m.examples, m.shuffle], plan.settings_of(m)) for m in plan.models}
    reused = {m.label for m in plan.models if _reusable(m.gguf, keys[m.label]) is not None}
    lines = plan_lines(plan.evaluated, {m.label: m.examples for m in plan.models}, base=plan.settings.base,
                       epochs=plan.settings.epochs, n_facts=len(read_facts(plan.facts)), reused=reused)  # fmt: skip
    say(render_plan(lines, grid_per_model=plan.grid_per_model))
    builds = []
    for model in plan.models:
        label, n, gguf = model.label, model.examples, model.gguf
        dataset = paths[n, model.shuffle]
        settings = plan.settings_of(model)
        key = keys[label]
        meta = _reusable(gguf, key)
        if meta is not None:
            say(f"{label}: reusing {gguf} (same data and settings)")
            builds.append(
                ModelBuild(
                    label=label, examples_per_fact=n, dataset=dataset, gguf=gguf,
                    kind=str(meta.get("engine.model_kind")), reused=True,
                    train_seconds=float(meta.get("engine.train_seconds", 0.0)),
                    final_loss=meta.get("engine.final_loss"), key=key, seed=model.seed, shuffle=model.shuffle,
                )
            )
            continue
        say(f"{label}: training on {dataset.name} ({settings.base}, seed {settings.seed}, {threads} thread(s))")
        result = train(dataset, out=gguf, settings=settings, threads=threads, log=_prefixed(say, label))
        say(f"{label}: done in {result.seconds:.1f} s -> {gguf} ({result.kind})")
        builds.append(
            ModelBuild(
                label=label, examples_per_fact=n, dataset=dataset, gguf=gguf, kind=result.kind,
                reused=False, train_seconds=result.seconds, final_loss=result.epoch_losses[-1], key=key,
                seed=model.seed, shuffle=model.shuffle,
            )
        )
    return reports, tuple(builds)


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
    from engine.results.layout import run_root
    from engine.run.runner import RunOptions, run_experiment

    root = run_root(load_spec(plan.spec_path).name, out)
    with Interrupts(), RunLock(root):
        started = time.monotonic()
        reports, builds = build_models(plan, log=say)
        build_seconds = time.monotonic() - started
        facts = read_facts(plan.facts)
        chance = tuple(chance_level(path, facts) for path in dict.fromkeys(b.dataset for b in builds))
        if train_only:
            return ReplicationResult(plan=plan, leakage=reports, builds=builds, build_seconds=build_seconds,
                                     chance=chance)  # fmt: skip
        started = time.monotonic()
        options = RunOptions(out=out, quiet=quiet, locked_by_caller=True)
        summary = run_experiment(plan.spec_path, options=options)
        write_training_record(root, plan, builds, chance)
    return ReplicationResult(
        plan=plan, leakage=reports, builds=builds, build_seconds=build_seconds,
        run=summary, eval_seconds=time.monotonic() - started, chance=chance,
    )


TRAINING_FILE = "training.json"
"""Beside the log in the run directory: how each model was trained (settings, train key, seed, set)."""


def write_training_record(
    run_dir: Path, plan: ReplicationPlan, builds: tuple[ModelBuild, ...], chance: tuple[ChanceLevel, ...]
) -> Path:
    """Write ``training.json`` into ``run_dir``: every model's set, seed, settings, train key, time and loss.

    Usage: ``write_training_record(Path("runs/replication-v2"), plan, builds, chance)``
    """
    doc = {
        "holdout": plan.holdout,
        "threshold": plan.threshold,
        "models": [
            {"label": b.label, "examples_per_fact": b.examples_per_fact, "shuffled": b.shuffle, "seed": b.seed,
             "set": b.dataset.name, "train_key": b.key, "kind": b.kind, "train_seconds": round(b.train_seconds, 1),
             "final_loss": b.final_loss, "settings": asdict(plan.settings_of_label(b.label))}
            for b in builds
        ],
        "chance": [{"set": c.set_name, "number": c.number, "times": c.times, "share": c.share} for c in chance],
    }  # fmt: skip
    path = run_dir / TRAINING_FILE
    try:
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise TrainError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


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
