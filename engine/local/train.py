"""Fine-tune SmolLM2-135M-Instruct (or train a tiny model from scratch) on a chat JSONL, on the CPU.

Two kinds of model, recorded in the output GGUF as ``engine.model_kind``:

- ``base="smollm2"`` (:data:`~engine.local.gguf.KIND_FINETUNE`): the pretrained
  SmolLM2-135M-Instruct, weights read from its GGUF, fully fine-tuned, written
  back as GGUF. The true analogue of the original study; minutes per set.
- ``base="tiny"`` (:data:`~engine.local.gguf.KIND_TINY`): a 2-layer, 128-wide
  llama trained from random weights on the facts only, with SmolLM2's
  tokenizer; seconds, for tests.

Text is tokenised by llama.cpp itself (a short-lived xllamacpp server on the
SmolLM2 GGUF, chat template included), so training sees exactly the tokens
the server will see. The loss is on the assistant reply (and its end token)
only. torch is imported lazily: the rest of ``engine`` works without it.

Usage::

    result = train("ft/train-5.jsonl", out=Path("models/ft-5x.gguf"), base="smollm2")
    print(result)   # kind, time, loss per epoch
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from engine.errors import ConfigError, TrainError
from engine.local.gguf import (
    FILE_TYPES,
    KIND_FINETUNE,
    KIND_TINY,
    LlamaConfig,
    gguf_keys,
    read_gguf,
    write_gguf,
)
from engine.local.loop import Example, fit
from engine.local.precision import CpuCapability, PrecisionChoice, choose_precision, detect_capability
from engine.local.progress import TrainProgress
from engine.local.serve import llama_server, smollm2_path

__all__ = [
    "BASES",
    "Example",
    "TrainResult",
    "TrainSettings",
    "available_cores",
    "default_settings",
    "load_dataset",
    "resolve_precision",
    "tokenize_dataset",
    "train",
    "train_key",
]

BASES: tuple[str, ...] = ("smollm2", "tiny")
"""Accepted values of ``base``."""

_RECIPE = 2
"""Version of the training loop in every train key. 2: batches grouped by length (a different
order, so a different model from the same data and settings than version 1's plain shuffle)."""

def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count).

    Usage: ``torch.set_num_threads(available_cores())``
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSettings:
    """How to train; :func:`default_settings` holds the per-base defaults.

    Usage: ``default_settings("tiny", epochs=40)``
    """

    base: str = "smollm2"
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    seed: int = 0
    warmup: float = 0.1
    bf16: bool | None = None  # None: by the CPU (resolve_precision); True/False: bf16 autocast or fp32
    file_type: str = "q8_0"
    tiny_dim: int = 128
    tiny_layers: int = 2
    tiny_heads: int = 4

    def validate(self) -> TrainSettings:
        """Return self, or raise :class:`~engine.errors.TrainError` on a value that cannot work."""
        if self.base not in BASES:
            raise TrainError(f"unknown base model {self.base!r}; use one of {', '.join(BASES)}")
        if self.epochs < 1 or self.batch_size < 1 or not (0 < self.lr < 1) or not (0 <= self.warmup < 1):
            raise TrainError(
                f"bad training settings: epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size},"
                f" warmup={self.warmup}"
            )
        if self.file_type not in FILE_TYPES:
            raise TrainError(f"unknown GGUF file type {self.file_type!r}; use one of {', '.join(FILE_TYPES)}")
        if self.tiny_dim % self.tiny_heads or self.tiny_dim % 32:
            raise TrainError(f"tiny_dim {self.tiny_dim} must be a multiple of 32 and of tiny_heads")
        return self


def default_settings(base: str = "smollm2", **overrides: Any) -> TrainSettings:
    """Defaults for ``base``, with ``overrides`` (None values ignored) applied.

    Usage: ``default_settings("smollm2", epochs=None, lr=1e-4).lr == 1e-4``
    """
    if base == "tiny":
        settings = TrainSettings(base="tiny", epochs=40, lr=3e-3, batch_size=16, bf16=False, file_type="f32")
    elif base == "smollm2":
        settings = TrainSettings(base="smollm2")
    else:
        raise TrainError(f"unknown base model {base!r}; use one of {', '.join(BASES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(TrainSettings.__dataclass_fields__)
    if unknown:
        raise TrainError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    return replace(settings, **given).validate()


def train_key(dataset_jsonl: str | Path, settings: TrainSettings) -> str:
    """20-hex key of (dataset bytes, settings): equal keys mean the same model would be trained.

    The precision must be resolved (``bf16`` True or False, see :func:`resolve_precision`): it
    changes the model, so it is part of the key; the thread count is not (rounding only).
    Usage: ``train_key("ft/train-5.jsonl", default_settings(bf16=True))``
    """
    if settings.bf16 is None:
        raise TrainError("train_key needs a resolved precision (resolve_precision first)")
    try:
        data = Path(dataset_jsonl).read_bytes()
    except OSError as exc:
        raise TrainError(f"cannot read {dataset_jsonl}: {exc.strerror or exc}") from exc
    relevant = asdict(settings)
    if settings.base != "tiny":
        # The tiny model's shape does not change a fine-tune: keep its key stable.
        relevant = {k: v for k, v in relevant.items() if not k.startswith("tiny_")}
    relevant["recipe"] = _RECIPE
    digest = hashlib.sha256(data)
    digest.update(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:20]


def load_dataset(path: str | Path) -> list[list[dict[str, str]]]:
    """The message lists of a chat fine-tuning JSONL; each must end with an assistant message.

    Usage: ``conversations = load_dataset("ft/train-5.jsonl")``
    """
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TrainError(f"cannot read training set {path}: {exc.strerror or exc}") from exc
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            messages = orjson.loads(line)["messages"]
            ok = messages[-1]["role"] == "assistant" and all(
                isinstance(m["content"], str) and isinstance(m["role"], str) for m in messages
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            raise TrainError(f"{path}:{number}: not a chat fine-tuning record ({type(exc).__name__})") from exc
        if not ok:
            raise TrainError(f"{path}:{number}: the last message must be the assistant's")
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not out:
        raise TrainError(f"{path}: no training examples")
    return out


def tokenize_dataset(conversations: Sequence[list[dict[str, str]]], *, threads: int = 1) -> list[Example]:
    """Tokenise with llama.cpp's SmolLM2 tokenizer and chat template.

    Usage: ``examples = tokenize_dataset(load_dataset("ft/train-5.jsonl"))``
    """
    with llama_server("smollm2", n_parallel=1, n_ctx=2048, threads=threads) as base_url:
        origin = base_url.removesuffix("/v1")
        with httpx.Client(base_url=origin, timeout=30.0) as client:

            def tokens(text: str, *, special: bool) -> list[int]:
                body = {"content": text, "add_special": special, "parse_special": special}
                return [int(t) for t in client.post("/tokenize", json=body).json()["tokens"]]

            end = tokens("<|im_end|>", special=True)
            if len(end) != 1:
                raise TrainError("the base model's tokenizer has no single <|im_end|> token")
            prompts: dict[str, list[int]] = {}
            examples = []
            try:
                for conversation in conversations:
                    head = conversation[:-1]
                    key = orjson.dumps(head).decode()
                    if key not in prompts:
                        text = client.post("/apply-template", json={"messages": head}).json()["prompt"]
                        prompts[key] = tokens(text, special=True)
                    reply = tokens(conversation[-1]["content"], special=False) + end
                    examples.append(Example(prompt=tuple(prompts[key]), reply=tuple(reply)))
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                raise TrainError(f"tokenising the training set failed ({type(exc).__name__})") from exc
    return examples


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainResult:
    """What a training run produced; ``str()`` is the train command's output.

    Usage: ``result.kind, result.seconds, result.epoch_losses[-1], result.precision``
    """

    out: Path
    kind: str
    settings: TrainSettings
    examples: int
    steps: int
    seconds: float
    tokenize_seconds: float
    epoch_losses: tuple[float, ...]
    losses: tuple[float, ...] = field(repr=False)
    key: str
    threads: int
    precision: str = "fp32"
    precision_reason: str = ""
    fit_seconds: float = 0.0
    padding: float = 0.0  # share of the batch positions that were padding
    model: Any = field(default=None, repr=False, compare=False)  # the trained torch model (for parity checks)

    def __str__(self) -> str:
        what = (
            "SmolLM2-135M-Instruct, pretrained, fully fine-tuned"
            if self.kind == KIND_FINETUNE
            else "tiny llama trained from scratch (not a pretrained model)"
        )
        s = self.settings
        per_step = self.fit_seconds / self.steps if self.steps else 0.0
        return "\n".join(
            [
                f"model: {self.out}",
                f"kind: {self.kind} ({what})",
                f"trained on {self.examples} examples, {s.epochs} epochs, {self.steps} steps,"
                f" lr {s.lr:g}, batch {s.batch_size}, seed {s.seed}, {self.threads} thread(s), {self.precision}",
                f"precision: {self.precision_reason}",
                f"time: {self.seconds:.1f} s (tokenising {self.tokenize_seconds:.1f} s, training"
                f" {self.fit_seconds:.1f} s = {per_step:.2f} s/step, padding {self.padding:.0%})",
                "loss per epoch: " + ", ".join(f"{x:.4f}" for x in self.epoch_losses),
            ]
        )


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError("training needs torch; run `pip install 'engine[train]'` (or `pip install torch`)") from exc
    return torch


def resolve_precision(
    settings: TrainSettings, *, threads: int | None = None, capability: CpuCapability | None = None
) -> tuple[TrainSettings, PrecisionChoice]:
    """``settings`` with ``bf16`` decided (by the CPU when it is None), and the choice with its reason.

    ``capability`` replaces the CPU's own (tests inject one); it is only probed when needed.
    Usage: ``settings, choice = resolve_precision(default_settings()); print(choice.reason)``
    """
    if settings.bf16 is not None:
        choice = choose_precision("bf16" if settings.bf16 else "fp32", capability)
        return settings, choice
    if capability is None:
        torch = _torch()
        torch.set_num_threads(threads or available_cores())
        capability = detect_capability(torch)
    choice = choose_precision("auto", capability)
    return replace(settings, bf16=choice.bf16), choice


def train(
    dataset_jsonl: str | Path,
    *,
    out: Path,
    base: str = "smollm2",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] | None = None,
    progress: TrainProgress | None = None,
    capability: CpuCapability | None = None,
) -> TrainResult:
    """Train on ``dataset_jsonl`` and write a GGUF to ``out``; None settings take the base's defaults.

    ``settings`` (if given) replaces ``base``/``epochs``/``lr``/``batch_size``/``seed``.
    ``threads``: default every core this process may use. ``progress`` reports steps and epochs
    (default: lines through ``log``, at most every 10 s, and one per epoch). ``capability``
    replaces the CPU probe behind precision "auto". Deterministic for a given seed and thread count.

    Usage: ``train("ft/train-5.jsonl", out=Path("models/ft-5x.gguf"), base="tiny", epochs=30)``
    """
    torch = _torch()
    s = settings or default_settings(base, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    s.validate()
    threads = threads or available_cores()
    report = progress or TrainProgress(write=log or (lambda _line: None))
    started = time.monotonic()
    conversations = load_dataset(dataset_jsonl)
    report.note(f"tokenising {len(conversations)} examples with llama.cpp ({threads} thread(s))")
    torch.set_num_threads(threads)
    examples = tokenize_dataset(conversations, threads=threads)
    tokenize_seconds = time.monotonic() - started
    s, choice = resolve_precision(s, threads=threads, capability=capability)
    key = train_key(dataset_jsonl, s)
    report.note(f"precision {choice.reason}")
    torch.manual_seed(s.seed)
    source = smollm2_path()
    model, kind = _initial_model(s, examples, source)
    steps = math.ceil(len(examples) / s.batch_size) * s.epochs
    params = sum(p.numel() for p in model.parameters())
    report.note(f"model {kind}, {params / 1e6:.1f} M parameters: {steps} steps ahead")
    fitted = fit(
        torch, model, examples, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed,
        warmup=s.warmup, bf16=bool(s.bf16), progress=report,
    )
    seconds = time.monotonic() - started
    model.eval()
    write_gguf(
        out,
        config=model.cfg,
        tensors=model.export(),
        meta_from=source,
        kind=kind,
        name=f"engine {kind} {Path(dataset_jsonl).stem}",
        file_type=s.file_type,
        extra={
            "engine.base": "SmolLM2-135M-Instruct" if kind == KIND_FINETUNE else "none (random init)",
            "engine.train_key": key,
            "engine.dataset": Path(dataset_jsonl).name,
            "engine.examples": len(examples),
            "engine.epochs": s.epochs,
            "engine.lr": float(s.lr),
            "engine.batch_size": s.batch_size,
            "engine.seed": s.seed,
            "engine.precision": choice.precision,
            "engine.precision_reason": choice.reason,
            "engine.threads": threads,
            "engine.train_seconds": float(round(seconds, 1)),
            "engine.final_loss": float(fitted.epoch_losses[-1]),
        },
    )
    return TrainResult(
        out=Path(out),
        kind=kind,
        settings=s,
        examples=len(examples),
        steps=len(fitted.losses),
        seconds=seconds,
        tokenize_seconds=tokenize_seconds,
        epoch_losses=tuple(fitted.epoch_losses),
        losses=tuple(fitted.losses),
        key=key,
        threads=threads,
        precision=choice.precision,
        precision_reason=choice.reason,
        fit_seconds=fitted.seconds,
        padding=fitted.padding,
        model=model,
    )


def _initial_model(s: TrainSettings, examples: Sequence[Example], source: Path) -> tuple[Any, str]:
    """Step 1: the model training starts from (SmolLM2's weights, or a tiny random one) and its kind."""
    # torch is an optional dependency and slow to import: only when training (not to dodge a cycle).
    from engine.local.torch_model import LlamaModel

    if s.base == "smollm2":
        pretrained = read_gguf(source)
        return LlamaModel.from_tensors(pretrained.config, pretrained.tensors), KIND_FINETUNE
    vocab = int(gguf_keys(source, "llama.vocab_size").get("llama.vocab_size") or 0)
    if vocab < 1:
        raise TrainError(f"{source}: no llama.vocab_size; cannot size the tiny model's vocabulary")
    cfg = LlamaConfig(
        vocab_size=vocab, dim=s.tiny_dim, n_layers=s.tiny_layers, n_heads=s.tiny_heads,
        n_kv_heads=s.tiny_heads, ffn_dim=3 * s.tiny_dim, rope_theta=10000.0, norm_eps=1e-5,
        context_length=2048,
    )
    seen = {t for ex in examples for t in ex.prompt + ex.reply}
    return LlamaModel(cfg, keep_ids=sorted(seen)), KIND_TINY
