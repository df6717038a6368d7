import math
import random

import pytest

from esmpipe.pipeline.sharding import (
    make_shards,
    retry_token_budget,
    sequence_cost,
    settings_key,
)


def items(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(f"{i:032x}", rng.randint(20, 1200)) for i in range(n)]


def test_every_item_once_sorted_by_length_and_deterministic():
    data = items(200)
    shards = make_shards(data, shard_size=50, exponent=1, key="k")
    seen = [h for s in shards for h in s.seq_hashes]
    assert sorted(seen) == sorted(h for h, _ in data)
    for s in shards:
        assert list(s.lengths) == sorted(s.lengths)
    shuffled = data[:]
    random.Random(1).shuffle(shuffled)
    again = make_shards(shuffled, shard_size=50, exponent=1, key="k")
    assert [s.shard_id for s in again] == [s.shard_id for s in shards]
    assert [s.seq_hashes for s in again] == [s.seq_hashes for s in shards]


@pytest.mark.parametrize("exponent", [1, 2, 3])
def test_shards_are_cost_balanced(exponent):
    data = items(300, seed=exponent)
    costs = [sequence_cost(length, exponent) for _, length in data]
    size = sum(costs) / 7.5
    shards = make_shards(data, shard_size=size, exponent=exponent, key="k")
    assert len(shards) == math.ceil(sum(costs) / size)
    loads = [s.cost for s in shards]
    # LPT: no shard exceeds the mean by more than the costliest single item.
    assert max(loads) <= sum(loads) / len(loads) + max(costs) + 1e-9


def test_cost_model_grows_with_length():
    assert sequence_cost(200, 1) == pytest.approx(2 * sequence_cost(100, 1))
    assert sequence_cost(200, 3) == pytest.approx(8 * sequence_cost(100, 3))
    assert sequence_cost(100, 3) == pytest.approx(1.0)


def test_long_sequence_gets_its_own_shard():
    data = [("a" * 32, 1000), ("b" * 32, 50), ("c" * 32, 60), ("d" * 32, 70)]
    shards = make_shards(data, shard_size=20, exponent=3, key="k")
    alone = [s for s in shards if "a" * 32 in s.seq_hashes]
    assert alone[0].seq_hashes == ("a" * 32,)


def test_shard_ids_depend_on_settings_and_members():
    data = items(10)
    one = make_shards(data, shard_size=1e9, exponent=1, key=settings_key({"model": "x"}))
    two = make_shards(data, shard_size=1e9, exponent=1, key=settings_key({"model": "y"}))
    fewer = make_shards(data[1:], shard_size=1e9, exponent=1, key=settings_key({"model": "x"}))
    assert len(one) == 1
    assert len({one[0].shard_id, two[0].shard_id, fewer[0].shard_id}) == 3
    assert settings_key({"a": 1, "b": 2}) == settings_key({"b": 2, "a": 1})


def test_edge_cases():
    assert make_shards([], shard_size=1, exponent=1, key="k") == []
    with pytest.raises(ValueError, match="distinct"):
        make_shards([("x", 1), ("x", 2)], shard_size=1, exponent=1, key="k")
    with pytest.raises(ValueError, match="positive"):
        make_shards([("x", 1)], shard_size=0, exponent=1, key="k")
    # Never more shards than sequences.
    assert len(make_shards(items(3), shard_size=1e-6, exponent=1, key="k")) == 3


def test_retry_halves_the_token_budget():
    assert [retry_token_budget(4096, a) for a in (1, 2, 3)] == [4096, 2048, 1024]
    assert retry_token_budget(3, 10) == 1
    with pytest.raises(ValueError):
        retry_token_budget(10, 0)
