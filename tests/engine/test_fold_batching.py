"""The folding engine's batching rule: similar lengths, bounded padding, one at a time on CPU."""

from __future__ import annotations

import random

import pytest

from esmpipe.engine.fold import FoldingEngine, plan_batches


def _lengths(seed: int = 0, n: int = 300) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 1000) for _ in range(n)]


@pytest.mark.parametrize("bound", [1.0, 1.1, 1.5])
def test_padded_cost_stays_within_the_bound(bound: float) -> None:
    lengths = _lengths()
    batches = plan_batches(lengths, max_tokens=4096, padding_bound=bound)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        own = [lengths[i] for i in batch]
        padded = max(own)
        assert len(batch) * padded**3 <= bound * sum(n**3 for n in own) + 1e-6
        assert len(batch) * padded**2 <= bound * sum(n**2 for n in own) + 1e-6
        assert len(batch) == 1 or len(batch) * padded**2 <= 4096**2
    assert any(len(b) > 1 for b in batches)  # the rule does batch similar lengths


def test_the_issue_set_is_not_packed_into_one_padded_batch() -> None:
    # The old budget (n * L^2 <= 1024^2) put 11 proteins of 136-300 residues in one batch.
    lengths = [300, 290, 276, 251, 232, 210, 193, 180, 171, 150, 136]
    batches = plan_batches(lengths, max_tokens=1024)
    for batch in batches:
        own = [lengths[i] for i in batch]
        assert len(own) * max(own) ** 3 <= 1.1 * sum(n**3 for n in own)
    assert len(batches) >= 8


def test_equal_lengths_batch_up_to_the_memory_budget_and_max_batch_size() -> None:
    assert plan_batches([100] * 5, max_tokens=200) == [[0, 1, 2, 3], [4]]
    assert plan_batches([100] * 5, max_tokens=10_000, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([100, 100], max_tokens=10_000, padding_bound=1.0) == [[0, 1]]
    with pytest.raises(ValueError, match="padding_bound"):
        plan_batches([1], max_tokens=10, padding_bound=0.5)


def test_cpu_folds_one_protein_at_a_time() -> None:
    import torch

    engine = FoldingEngine(torch.nn.Linear(2, 2), max_tokens=10_000)
    assert engine.max_batch_size == 1
    assert FoldingEngine(torch.nn.Linear(2, 2), max_batch_size=8).max_batch_size == 8
