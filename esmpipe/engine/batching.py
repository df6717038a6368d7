"""Which sequences run together: de-duplication, token-budget batches, OOM splitting.

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

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

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


class OutOfMemory:
    """Marks an item that ran out of device memory even alone in its batch."""

    def __repr__(self) -> str:
        return "OutOfMemory()"


OUT_OF_MEMORY = OutOfMemory()

R = TypeVar("R")


def run_splitting_on_oom(
    batch: list[int],
    run: Callable[[list[int]], list[R]],
    is_oom: Callable[[BaseException], bool],
    on_oom: Callable[[], None] = lambda: None,
) -> Iterator[tuple[int, R | OutOfMemory]]:
    """Run `run(batch)` (one result per index); on out-of-memory split in halves and retry.

    Yields (index, result) for every index of `batch`, in batch order; an index
    that runs out of memory alone yields `OUT_OF_MEMORY`. `on_oom` is called
    after each failure (to free cached device memory before the retry).
    """
    try:
        results = run(batch)
        failed = False
    except Exception as err:
        if not is_oom(err):
            raise
        failed = True
    # NOTE: the retry happens outside the except block on purpose: while the
    # exception is alive its traceback keeps the failed forward's tensors alive,
    # and the halves would run out of memory too.
    if failed:
        on_oom()
        if len(batch) == 1:
            log.warning("out of memory on a single sequence (index %d); skipped", batch[0])
            yield batch[0], OUT_OF_MEMORY
            return
        half = len(batch) // 2
        log.info("out of memory on a batch of %d; retrying as %d + %d", len(batch), half,
                 len(batch) - half)  # fmt: skip
        yield from run_splitting_on_oom(batch[:half], run, is_oom, on_oom)
        yield from run_splitting_on_oom(batch[half:], run, is_oom, on_oom)
        return
    if len(results) != len(batch):
        raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
    yield from zip(batch, results, strict=True)
