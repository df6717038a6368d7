"""Cost-balanced, deterministic sharding of distinct sequences.

Cost model. One job processes one shard on one GPU, so shards should take about
the same time. The time of a sequence of length L is modelled as

    cost(L) = (L / 100) ** exponent        (in units of one 100-residue sequence)

- embedding (ESM-2): exponent 1. Batches are packed to a token budget, and at the
  lengths ESM-2 takes (<= 1,024) the feed-forward and projection work, linear in
  L, dominates the quadratic attention term; time per residue is about constant.
- folding (ESMFold): exponent 3. The folding trunk updates an L x L pair
  representation with triangular multiplication and triangular attention, which
  are O(L^3) per block (48 blocks), and that term dominates beyond ~200 residues:
  a 1,000-residue chain costs about as much as a thousand 100-residue ones.

`shard_size` is the target cost of one shard in the same units. The number of
shards is ceil(total cost / shard_size); sequences are dealt out longest first to
the currently cheapest shard (the LPT rule, within 4/3 of the optimal makespan),
ties broken by seq_hash so the result depends only on the inputs. A sequence
costlier than `shard_size` gets a shard of its own. Inside a shard, sequences are
sorted by length so the inference engine pads little.

A shard's id is a digest of its member hashes and the stage settings, so the same
work under the same settings always has the same name (the cache key).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass


def sequence_cost(length: int, exponent: float) -> float:
    """Cost of one sequence of `length` residues, in units of a 100-residue sequence."""
    return (max(length, 1) / 100.0) ** exponent


def settings_key(settings: dict) -> str:
    """A short, stable digest of the settings that determine a stage's results."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_id(member_hashes: Sequence[str], key: str) -> str:
    """Content address of a shard: its (sorted) members and the settings key."""
    h = hashlib.sha256(key.encode())
    for seq_hash in sorted(member_hashes):
        h.update(b"\0" + seq_hash.encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Shard:
    """A planned unit of GPU work: members sorted by (length, seq_hash)."""

    shard_id: str
    seq_hashes: tuple[str, ...]
    lengths: tuple[int, ...]
    cost: float


def make_shards(
    items: Sequence[tuple[str, int]],
    *,
    shard_size: float,
    exponent: float,
    key: str,
) -> list[Shard]:
    """Split `(seq_hash, length)` items into cost-balanced shards.

    Deterministic: the same items (in any order) and settings give the same shards,
    returned sorted by shard id. Items must have distinct hashes.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not items:
        return []
    hashes = [h for h, _ in items]
    if len(set(hashes)) != len(hashes):
        raise ValueError("make_shards needs distinct seq_hashes")
    costed = sorted(
        ((sequence_cost(length, exponent), h, length) for h, length in items),
        key=lambda t: (-t[0], t[1]),
    )
    total = sum(c for c, _, _ in costed)
    n_shards = max(1, math.ceil(total / shard_size))
    # NOTE: more shards than sequences would leave some empty.
    n_shards = min(n_shards, len(costed))
    # Heap of (load, shard index): the cheapest shard so far takes the next item.
    heap = [(0.0, i) for i in range(n_shards)]
    members: list[list[tuple[int, str]]] = [[] for _ in range(n_shards)]
    loads = [0.0] * n_shards
    for cost, h, length in costed:
        load, i = heapq.heappop(heap)
        members[i].append((length, h))
        loads[i] = load + cost
        heapq.heappush(heap, (loads[i], i))
    shards = []
    for i, group in enumerate(members):
        group.sort()
        shards.append(
            Shard(
                shard_id=shard_id([h for _, h in group], key),
                seq_hashes=tuple(h for _, h in group),
                lengths=tuple(length for length, _ in group),
                cost=loads[i],
            )
        )
    return sorted(shards, key=lambda s: s.shard_id)


def retry_token_budget(max_tokens: int, attempt: int) -> int:
    """Token budget of a batch on the given attempt (1-based): halved on every retry.

    A GPU job that ran out of memory is retried by Snakemake with the next attempt
    number; smaller batches need less activation memory, down to one sequence per
    batch (the inference engine never splits a sequence).
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    return max(1, max_tokens >> (attempt - 1))

