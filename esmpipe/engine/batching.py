"""Which sequences run together: de-duplication and token-budget batches.

Batches are built from lengths alone, deterministically: sequences sorted by
length, longest first (ties in input order), then cut greedily so that each
batch's padded cost stays within the budget. Longest first means a budget that
is too large for the device fails in the first minute, not at the end of a
shard, and the tail of the run is short sequences that finish quickly.

Cost models (`cost(n, L)` for n sequences padded to L residues):
- embedding: tokens, `n * (L + 2)` (BOS and EOS added by the tokenizer);
- folding: pair representation, `n * L**2` (the trunk's memory grows with the
  square of the length).

A sequence whose own cost exceeds the budget still runs, alone in its batch:
the budget shapes batches, it does not reject sequences (`--max-length` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def embed_cost(n: int, length: int) -> int:
    """Padded tokens of n sequences of `length` residues with BOS and EOS."""
    return n * (length + 2)


def fold_cost(n: int, length: int) -> int:
    """Pair-representation cells of n sequences of `length` residues."""
    return n * length * length


def make_batches(
    lengths: Sequence[int],
    budget: int,
    cost: Callable[[int, int], int] = embed_cost,
    *,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches whose `cost(n, max_len) <= budget`.

    Longest first, ties in input order; every index appears exactly once.
    """
    if budget <= 0:
        raise ValueError(f"batch budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the first member fixes the batch's padded length.
        padded = lengths[current[0]] if current else lengths[i]
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or cost(len(current) + 1, padded) > budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def dedup(keys: Sequence[T]) -> tuple[list[T], list[int]]:
    """(distinct keys in first-seen order, index of each input's key in that list)."""
    first: dict[T, int] = {}
    inverse = [first.setdefault(k, len(first)) for k in keys]
    return list(first), inverse
