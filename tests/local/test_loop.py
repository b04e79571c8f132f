"""The training loop's batching: every example once per epoch, grouped by length, random order."""

from __future__ import annotations

import random

from engine.local.loop import BUCKET_BATCHES, Example, batches, padding_share


def _examples(n: int, seed: int = 1) -> list[Example]:
    rng = random.Random(seed)
    # Lengths 35-49 like the 5x set; the prompt's ids are the example's number, so each is unique.
    return [Example(prompt=(i,) * rng.randint(25, 39), reply=(7,) * 9 + (2,)) for i in range(n)]


def _plain_shuffle(examples: list[Example], size: int, rng: random.Random) -> list[list[Example]]:
    order = list(examples)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_every_example_once_per_epoch_in_batches_of_the_size() -> None:
    examples = _examples(250)
    groups = batches(examples, 8, random.Random(0))
    flat = [ex for group in groups for ex in group]
    assert sorted(flat, key=lambda ex: ex.prompt) == sorted(examples, key=lambda ex: ex.prompt)
    assert len(groups) == 32 and sum(len(g) == 8 for g in groups) == 31  # 250 = 31 x 8 + 2
    assert batches(examples, 8, random.Random(0)) == groups  # deterministic for a seed
    assert batches(examples, 8, random.Random(1)) != groups


def test_length_grouping_cuts_padding_and_keeps_the_order_random() -> None:
    examples = _examples(250)
    grouped = [padding_share(batches(examples, 8, random.Random(s))) for s in range(5)]
    plain = [padding_share(_plain_shuffle(examples, 8, random.Random(s))) for s in range(5)]
    assert max(grouped) < min(plain) / 3, (grouped, plain)
    assert min(grouped) > 0.0  # 250 examples in windows of 64: lengths still differ within a batch
    # Batch order is shuffled: the batches' lengths are not sorted across the epoch.
    widths = [max(len(ex) for ex in g) for g in batches(examples, 8, random.Random(0))]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    # Grouping only sorts within a window: the first window's examples stay among themselves.
    rng = random.Random(0)
    order = list(examples)
    rng.shuffle(order)
    first_window = {ex.prompt for ex in order[: 8 * BUCKET_BATCHES]}
    groups = batches(examples, 8, random.Random(0))
    assert sum(all(ex.prompt in first_window for ex in g) for g in groups) == BUCKET_BATCHES


def test_padding_share_counts_collated_positions() -> None:
    a = Example(prompt=(1, 2, 3), reply=(4, 2))  # 5 tokens -> 4 positions
    b = Example(prompt=(1,), reply=(4, 2))  # 3 tokens -> 2 positions, padded to 4
    assert padding_share([[a, b]]) == 2 / 8
    assert padding_share([[a], [b]]) == 0.0
