"""The training loop: examples grouped by length into batches, AdamW, loss on the reply only.

torch is passed in (``engine.local.train`` imports it lazily, so the rest of
``engine`` works without it); this module never imports it.

Where the time goes, and what this loop does about it (figures in
docs/results.md, "Training speed"):

- *padding*: a plain shuffle puts a 35-token and a 49-token example in one
  batch; :func:`batches` shuffles, then sorts each window of a few batches by
  length before cutting it, so a batch holds examples of nearly one length and
  the order of batches is still random;
- *the shared prefix*: every example starts with the same system message and
  chat markup (:func:`shared_prefix`); each batch computes it once and every row
  attends to it (``LlamaModel.hidden_shared``: the same loss and gradients);
- *the optimiser*: AdamW's fused CPU kernel makes one pass over the 135 M
  parameters instead of a dozen element-wise passes;
- *precision*: bf16 autocast where :mod:`engine.local.precision` chose it.

Usage::

    fitted = fit(torch, model, examples, epochs=3, lr=2e-4, batch_size=8, seed=0, warmup=0.1,
                 bf16=False, progress=TrainProgress(write=print))
    fitted.epoch_losses[-1]
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import TrainError
from engine.local.progress import TrainProgress

__all__ = [
    "BUCKET_BATCHES", "Example", "FitResult", "batches", "collate", "fit", "make_optimizer", "padding_share", "shared_prefix",
    "train_step",
]

BUCKET_BATCHES = 8
"""Length grouping: after the shuffle, each window of this many batches is sorted by length."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Example:
    """One tokenised training example: prompt ids then reply ids (reply ends with the end token).

    Usage: ``len(ex.prompt) + len(ex.reply)``
    """

    prompt: tuple[int, ...]
    reply: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.reply)


@dataclass(frozen=True, kw_only=True, slots=True)
class FitResult:
    """The losses of a fit and how long it took.

    Usage: ``fitted.losses[-1], fitted.epoch_losses, fitted.seconds / len(fitted.losses)``
    """

    losses: tuple[float, ...]
    epoch_losses: tuple[float, ...]
    seconds: float
    padding: float  # share of batch positions that were padding, over the whole fit


def batches(examples: Sequence[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """One epoch's batches: shuffled, grouped by length within windows, batch order shuffled.

    Usage: ``for batch in batches(examples, 8, random.Random(0)): ...``
    """
    order = list(examples)
    rng.shuffle(order)
    window = size * BUCKET_BATCHES
    out: list[list[Example]] = []
    for start in range(0, len(order), window):
        # sorted() is stable: equal lengths keep their shuffled order.
        chunk = sorted(order[start : start + window], key=len)
        out.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
    rng.shuffle(out)
    return out


def padding_share(groups: Sequence[Sequence[Example]]) -> float:
    """Share of the positions of ``groups`` (as collated) that are padding.

    Usage: ``padding_share(batches(examples, 8, rng))``
    """
    cells = sum(len(group) * (max(len(ex) for ex in group) - 1) for group in groups)
    used = sum(len(ex) - 1 for group in groups for ex in group)
    return 1.0 - used / cells if cells else 0.0


def shared_prefix(examples: Sequence[Example]) -> int:
    """Length of the prompt start every example shares (system message, chat markup), loss-free.

    Capped one short of the shortest prompt, so no prefix position ever predicts a reply token.
    Usage: ``p = shared_prefix(examples)``
    """
    first = examples[0].prompt
    p = min(len(ex.prompt) for ex in examples) - 1
    for ex in examples:
        while p > 0 and ex.prompt[:p] != first[:p]:
            p -= 1
    return max(0, p)


def collate(torch: Any, batch: Sequence[Example], pad: int, *, shared: int = 0) -> tuple[Any, Any, Any]:
    """Inputs, targets and the loss mask of one right-padded batch, after the ``shared`` prefix.

    Usage: ``inputs, targets, mask = collate(torch, batch, pad=2)``
    """
    rows = [list(ex.prompt) + list(ex.reply) for ex in batch]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (row, ex) in enumerate(zip(rows, batch, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        # Position p predicts token p+1: the loss covers exactly the reply tokens.
        mask[i, len(ex.prompt) - 1 : len(row) - 1] = True
    return ids[:, shared:-1], ids[:, shared + 1 :], mask[:, shared:]


def make_optimizer(torch: Any, model: Any, lr: float) -> Any:
    """AdamW over ``model``'s parameters, fused where torch has the CPU kernel.

    Usage: ``optimizer = make_optimizer(torch, model, 2e-4)``
    """
    try:
        # One fused pass per parameter instead of about ten element-wise ones.
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):  # a torch without the fused CPU kernel
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def fit(
    torch: Any,
    model: Any,
    examples: Sequence[Example],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    warmup: float,
    bf16: bool,
    progress: TrainProgress,
) -> FitResult:
    """Train ``model`` in place (AdamW, warm-up then linear decay, loss on replies only).

    Usage: ``fit(torch, model, examples, epochs=3, lr=2e-4, batch_size=8, seed=0, warmup=0.1,
    bf16=False, progress=TrainProgress(write=print))``
    """
    started = time.monotonic()
    pad = examples[0].reply[-1]
    shared = shared_prefix(examples)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(total * warmup))
    optimizer = make_optimizer(torch, model, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))
    )
    model.train()
    losses: list[float] = []
    epoch_losses: list[float] = []
    all_groups: list[list[Example]] = []
    progress.start(epochs=epochs, steps_per_epoch=steps_per_epoch)
    for epoch in range(epochs):
        epoch_sum = 0.0
        groups = batches(examples, batch_size, rng)
        all_groups.extend(groups)
        for step, batch in enumerate(groups):
            value = train_step(torch, model, optimizer, batch, pad=pad, bf16=bf16, shared=shared)
            schedule.step()
            if not math.isfinite(value):
                raise TrainError(f"training diverged at epoch {epoch + 1} (loss {value}); lower the learning rate")
            losses.append(value)
            epoch_sum += value * len(batch)
            progress.step(epoch=epoch, step=step, loss=value)
        epoch_losses.append(epoch_sum / len(examples))
        progress.end_epoch(epoch=epoch, loss=epoch_losses[-1])
    return FitResult(
        losses=tuple(losses), epoch_losses=tuple(epoch_losses), seconds=time.monotonic() - started,
        padding=padding_share(all_groups),
    )


def train_step(
    torch: Any, model: Any, optimizer: Any, batch: Sequence[Example], *, pad: int, bf16: bool, shared: int = 0
) -> float:
    """One optimiser step on ``batch``; returns its loss. ``shared``: see :func:`shared_prefix`.

    Usage: ``loss = train_step(torch, model, optimizer, batch, pad=2, bf16=False)``
    """
    inputs, targets, mask = collate(torch, batch, pad, shared=shared)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if shared:
            prefix = torch.tensor(batch[0].prompt[:shared], dtype=torch.long)
            hidden = model.hidden_shared(prefix, inputs)[mask]
        else:
            hidden = model.hidden(inputs)[mask]
        logits = model.logits(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits, model.compact(targets[mask]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())
