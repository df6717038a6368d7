"""Batching: budget, determinism and de-duplication."""

from __future__ import annotations

import random

import pytest

from esmpipe.engine.batching import dedup, embed_cost, fold_cost, make_batches


def _lengths(seed: int = 0, n: int = 500) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 1000) for _ in range(n)]


@pytest.mark.parametrize(("cost", "budget"), [(embed_cost, 4096), (fold_cost, 2_000_000)])
def test_budget_and_cover(cost, budget: int) -> None:
    lengths = _lengths()
    batches = make_batches(lengths, budget, cost)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        padded = max(lengths[i] for i in batch)
        assert len(batch) == 1 or cost(len(batch), padded) <= budget
        # Greedy: one more sequence of the batch's padded length would not have fit.
        assert cost(len(batch) + 1, padded) > budget or batch is batches[-1]
    # Longest first, so batch maxima never increase.
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima == sorted(maxima, reverse=True)


def test_deterministic_and_ties_in_input_order() -> None:
    lengths = _lengths(1)
    assert make_batches(lengths, 3000) == make_batches(list(lengths), 3000)
    assert make_batches([5, 5, 5, 5], embed_cost(2, 5)) == [[0, 1], [2, 3]]


def test_oversized_sequence_runs_alone_and_batch_size_cap() -> None:
    assert make_batches([10, 2000, 10], 100) == [[1], [0, 2]]
    assert make_batches([3] * 5, 10_000, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="positive"):
        make_batches([1], 0)


def test_dedup() -> None:
    assert dedup(["b", "a", "b", "c", "a"]) == (["b", "a", "c"], [0, 1, 0, 2, 1])
