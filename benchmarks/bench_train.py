"""Training speed on this machine: seconds per step by precision and threads, and the whole 5x run.

Fine-tunes SmolLM2-135M-Instruct on the project's 5x set (``engine data finetune data/facts.csv
--examples 5``: 250 examples, batch 8) exactly as ``engine train`` does, and prints:

- the CPU: model name, ``nproc``, torch's capability level, whether bf16 is native, and the
  precision probe's timings (``engine.local.precision``) at 1 and at all threads;
- **seconds per step** for fp32 and bf16 x 1 thread and all threads: each configuration in a
  fresh process (the model loaded, one warm-up step, then ``--steps`` timed steps on the real
  batches), median; configurations interleaved over ``--rounds`` rounds so load elsewhere hits
  them alike;
- **serial vs parallel**: two models side by side with one thread each, against one model with
  every thread (seconds per step of the pair / 2), in the precision ``auto`` picks;
- with ``--full``: the whole 5x run, ``engine train`` with default settings, wall time; and
  with ``--parity``: a 1-epoch fine-tune exported as f32 and the greedy parity check
  (``engine.local.parity``) against llama.cpp on the fixed prompt set.

The load (``uptime``) is printed before and after: on a shared machine, compare ratios within
one run, never figures across runs.

Usage::

    python benchmarks/bench_train.py                       # s/step table, ~5 min on 2 quiet cores
    python benchmarks/bench_train.py --full --parity       # plus the whole 5x run and the parity check
    python benchmarks/bench_train.py --worker ...          # (internal: one timed configuration)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from engine.bench.throughput import machine

REPO = Path(__file__).resolve().parents[1]


def load() -> str:
    """The machine's load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"



def prepare(folder: Path) -> Path:
    """Build the 5x set and tokenise it once; returns the JSON of token ids the workers read."""
    from engine.local.train import load_dataset, tokenize_dataset
    from engine.study.finetune import build_finetune_sets

    dataset = build_finetune_sets(REPO / "data" / "facts.csv", examples=(5,), out_dir=folder)[5]
    examples = tokenize_dataset(load_dataset(dataset))
    tokens = folder / "tokens.json"
    tokens.write_bytes(orjson.dumps([[list(ex.prompt), list(ex.reply)] for ex in examples]))
    return tokens


def worker(tokens: Path, *, threads: int, bf16: bool, steps: int, plain: bool = False) -> list[float]:
    """Seconds of each of ``steps`` optimiser steps after one warm-up step (SmolLM2, batch 8).

    ``plain``: without the shared-prefix path (every row computes the system prompt itself).
    """
    import random

    import torch

    from engine.local.gguf import read_gguf
    from engine.local.loop import Example, batches, make_optimizer, shared_prefix, train_step
    from engine.local.serve import smollm2_path
    from engine.local.torch_model import LlamaModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    examples = [Example(prompt=tuple(p), reply=tuple(r)) for p, r in orjson.loads(tokens.read_bytes())]
    pretrained = read_gguf(smollm2_path())
    model = LlamaModel.from_tensors(pretrained.config, pretrained.tensors)
    model.train()
    optimizer = make_optimizer(torch, model, 2e-4)
    pad = examples[0].reply[-1]
    shared = 0 if plain else shared_prefix(examples)
    groups = batches(examples, 8, random.Random(0))
    train_step(torch, model, optimizer, groups[0], pad=pad, bf16=bf16, shared=shared)
    times = []
    for batch in groups[1 : steps + 1]:
        started = time.perf_counter()
        train_step(torch, model, optimizer, batch, pad=pad, bf16=bf16, shared=shared)
        times.append(time.perf_counter() - started)
    return times


def run_worker(
    tokens: Path, *, threads: int, bf16: bool, steps: int, plain: bool = False
) -> subprocess.Popen[bytes]:
    """Start one timed configuration in a fresh process (its own torch thread pool)."""
    argv = [sys.executable, __file__, "--worker", str(tokens), "--threads", str(threads), "--steps", str(steps)]
    flags = [*(["--bf16"] if bf16 else []), *(["--plain"] if plain else [])]
    return subprocess.Popen([*argv, *flags], stdout=subprocess.PIPE)


def collect(process: subprocess.Popen[bytes]) -> list[float]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a worker failed (exit {process.returncode})")
    times: list[float] = orjson.loads(out.splitlines()[-1])
    return times


def capability_lines(cores: int) -> list[str]:
    import torch

    from engine.local.precision import choose_precision, detect_capability

    lines = []
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        capability = detect_capability(torch)
        lines.append(f"  {threads} thread(s): {capability.describe()} -> {choose_precision('auto', capability).reason}")
    return lines


def step_table(tokens: Path, *, cores: int, steps: int, rounds: int) -> dict[tuple[str, int], float]:
    """Median s/step per (precision, threads), configurations interleaved over rounds."""
    configs = [(p, t) for t in sorted({1, cores}) for p in ("fp32", "bf16")]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for precision, threads in configs if r % 2 == 0 else reversed(configs):
            times[(precision, threads)] += collect(
                run_worker(tokens, threads=threads, bf16=precision == "bf16", steps=steps)
            )
    return {c: statistics.median(v) for c, v in times.items()}


def shared_vs_plain(tokens: Path, *, cores: int, steps: int, rounds: int, bf16: bool) -> tuple[float, float]:
    """(s/step with the shared-prefix path, s/step without), interleaved over rounds."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for plain in (False, True) if r % 2 == 0 else (True, False):
            times[plain] += collect(run_worker(tokens, threads=cores, bf16=bf16, steps=steps, plain=plain))
    return statistics.median(times[False]), statistics.median(times[True])


def side_by_side(tokens: Path, *, cores: int, steps: int, bf16: bool) -> tuple[float, float]:
    """(one model on every thread: s/step, two models on one thread each at once: s/step of the pair / 2)."""
    alone = statistics.median(collect(run_worker(tokens, threads=cores, bf16=bf16, steps=steps)))
    pair = [run_worker(tokens, threads=1, bf16=bf16, steps=steps) for _ in range(2)]
    both = [statistics.median(collect(p)) for p in pair]
    return alone, statistics.mean(both) / 2


def full_run(folder: Path) -> tuple[float, float, str]:
    """``engine train`` on the 5x set with default settings, its output redirected to a pipe.

    Returns (wall seconds, seconds until the first step's progress line arrived, the output).
    """
    dataset = folder / "train-5.jsonl"
    out = folder / "ft-5x.gguf"
    started = time.perf_counter()
    first_step = float("nan")
    lines = []
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "train", str(dataset), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if " step 1/" in line and first_step != first_step:
                first_step = time.perf_counter() - started
            lines.append(line.rstrip("\n"))
    if process.returncode != 0:
        raise SystemExit(f"engine train failed (exit {process.returncode})")
    return time.perf_counter() - started, first_step, "\n".join(lines)


def parity(folder: Path) -> str:
    """1-epoch fine-tune of SmolLM2 on the 5x set, exported as f32, checked against llama.cpp."""
    import torch

    from engine.local.parity import PARITY_PROMPTS, greedy_parity
    from engine.local.serve import llama_server
    from engine.local.train import default_settings, train

    settings = default_settings("smollm2", epochs=1, file_type="f32")
    result = train(folder / "train-5.jsonl", out=folder / "parity.gguf", settings=settings)
    with llama_server(result.out, n_parallel=1, n_ctx=1024) as base_url:
        report = greedy_parity(torch, result.model, base_url, PARITY_PROMPTS, max_tokens=16)
    return f"{report.describe()} ({result.precision}, {result.threads} thread(s))"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration and round (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the configurations (default 2)")
    parser.add_argument("--full", action="store_true", help="also time the whole 5x run (engine train, defaults)")
    parser.add_argument("--parity", action="store_true", help="also check greedy parity of an f32 export")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(orjson.dumps(worker(args.worker, threads=args.threads, bf16=args.bf16, steps=args.steps, plain=args.plain)).decode())
        return 0

    import torch

    from engine.local.train import available_cores

    cores = available_cores()
    print(f"{machine()['cpu']}, nproc {os.cpu_count()}, {cores} core(s) for this process, torch {torch.__version__}")
    print(f"start: {load()}")
    print("capability and precision probe:")
    print("\n".join(capability_lines(cores)))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        tokens = prepare(folder)
        table = step_table(tokens, cores=cores, steps=args.steps, rounds=args.rounds)
        print(f"seconds per step (SmolLM2, 5x set, batch 8; median of {args.steps} x {args.rounds}):")
        for (precision, threads), seconds in table.items():
            ratio = table[("fp32", 1)] / seconds
            print(f"  {precision:<5} {threads} thread(s): {seconds:6.2f} s/step  ({ratio:.2f}x fp32 on 1 thread)")
        best = min(("fp32", "bf16"), key=lambda p: table[(p, cores)])
        shared, plain = shared_vs_plain(tokens, cores=cores, steps=args.steps, rounds=args.rounds, bf16=best == "bf16")
        print(f"shared prefix ({best}, {cores} threads): {shared:.2f} s/step with, {plain:.2f} without"
              f" ({plain / shared:.2f}x)")
        if cores > 1:
            alone, pair = side_by_side(tokens, cores=cores, steps=args.steps, bf16=best == "bf16")
            verdict = "one model at a time" if alone <= pair else "models side by side"
            print(f"serial vs parallel ({best}): one model, {cores} threads: {alone:.2f} s/step;"
                  f" two models, 1 thread each: {pair:.2f} s/step per model-step -> {verdict}")
        print(f"after the step table: {load()}")
        if args.full:
            seconds, first, output = full_run(folder)
            print(f"whole 5x run, `engine train` defaults: {seconds:.1f} s wall, first step line after"
                  f" {first:.1f} s ({load()})")
            print("\n".join("  " + line for line in output.splitlines() if not line.startswith("epoch ")))
        if args.parity:
            print(f"greedy parity, SmolLM2 f32 export: {parity(folder)}")
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
