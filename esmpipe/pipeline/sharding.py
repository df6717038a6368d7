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

Sizing (the defaults in workflow/schemas/config.schema.yaml). A shard is one GPU
job, one cache part and, after gathering, one file of the stage's table, so the
size is chosen for a cohort of millions of records: a job long enough that its
start-up (loading ESMFold's 8 GB of weights) and the scheduler's per-job cost
are small beside it, short enough that the job's runtime request (fold: 8 h)
holds on an older GPU and a failed job loses little (jobs resume from their
last batch anyway).

- fold: 50,000 units. ESMFold folds a 384-residue chain in 14.2 s on a V100 (the
  paper), 56.6 units, so one unit is about 0.25 s there and a shard about 3.5 h of
  a V100 (proportionally less on newer GPUs). Lengths uniform in 30-500 cost 33
  units on average (more with a long tail), so a shard holds ~1,500 sequences and
  a million records (~625,000 distinct) make ~400 jobs and files; the earlier
  2,000 made ~10,000 jobs of minutes each and as many tiny files.
- embed: 20,000 units = 2 million residues, minutes of a GPU for ESM-2 650M.

An incremental run plans only the sequences no cache part holds, so it makes
ceil(new cost / shard_size) shards: writes stay in proportion to what is new.
NOTE: the cubic model undercounts short chains (the language model's work,
linear in L, weighs more there); the runtime request leaves room for it.

A shard's id is a digest of its member hashes and the stage settings, so the same
work under the same settings always has the same name (the cache key).

At cohort scale the items never sit in Python lists: the planner streams them
from DuckDB in LPT order and `Balancer` deals out each run of equal lengths at
once with numpy. Items of one length have one cost c, and the heap's choices for
them are the smallest of the slots (load_b + t * c, b), t = 0, 1, ... of every
shard b, so a run of k items takes the k smallest slots: the same shards as the
heap, item for item (up to rounding in the last bit of a load).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
    order = sorted(items, key=lambda t: (-t[1], t[0]))
    lengths = np.array([length for _, length in order], dtype=np.int64)
    costs = sequence_costs(lengths, exponent)
    balancer = Balancer(shard_count(costs, len(order), shard_size))
    bins = balancer.assign(lengths, exponent)
    members: list[list[tuple[int, str]]] = [[] for _ in range(balancer.n_shards)]
    for (h, length), b in zip(order, bins.tolist(), strict=True):
        members[b].append((length, h))
    shards = []
    for i, group in enumerate(members):
        group.sort()
        shards.append(
            Shard(
                shard_id=shard_id([h for _, h in group], key),
                seq_hashes=tuple(h for _, h in group),
                lengths=tuple(length for length, _ in group),
                cost=float(balancer.loads[i]),
            )
        )
    return sorted(shards, key=lambda s: s.shard_id)


def sequence_costs(lengths: np.ndarray, exponent: float) -> np.ndarray:
    """`sequence_cost` of every length, as float64."""
    return (np.maximum(lengths, 1).astype(np.float64) / 100.0) ** exponent


def shard_count(costs: np.ndarray | float, n_items: int, shard_size: float) -> int:
    """ceil(total cost / shard_size), at least one, never more than the items."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    total = float(np.sum(costs)) if isinstance(costs, np.ndarray) else float(costs)
    # NOTE: more shards than sequences would leave some empty.
    return max(1, min(math.ceil(total / shard_size), n_items))


class Balancer:
    """The LPT rule over a stream of items in order of (cost descending, seq_hash).

    `assign` may be called on consecutive slices of the stream; it keeps only the
    shard loads, so memory does not grow with the number of items.
    """

    def __init__(self, n_shards: int) -> None:
        if n_shards < 1:
            raise ValueError(f"need at least one shard, got {n_shards}")
        self.n_shards = n_shards
        self.loads = np.zeros(n_shards, dtype=np.float64)

    def assign(self, lengths: np.ndarray, exponent: float) -> np.ndarray:
        """The shard index of each item (lengths non-increasing across all calls)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        out = np.empty(len(lengths), dtype=np.int32)
        if not len(lengths):
            return out
        if np.any(np.diff(lengths) > 0):
            raise ValueError("Balancer.assign needs lengths in non-increasing order")
        starts = np.flatnonzero(np.r_[True, lengths[1:] != lengths[:-1]])
        ends = np.r_[starts[1:], len(lengths)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            cost = float(sequence_costs(lengths[start:start + 1], exponent)[0])
            out[start:end] = self._take(end - start, cost)
        return out

    def _take(self, k: int, cost: float) -> np.ndarray:
        """Shards of k items of equal cost: the k smallest slots (load + t * cost, shard)."""
        n = self.n_shards
        # A level with at least k slots at or below it: the k-th smallest load (k
        # shards have their first slot there), or one every shard reaches k / n times.
        if k <= n:
            hi = float(np.partition(self.loads, k - 1)[k - 1])
        else:
            hi = float(self.loads.max()) + cost * math.ceil(k / n)
        # Only shards loaded up to that level hold candidate slots.
        near = np.flatnonzero(self.loads <= hi)
        loads = self.loads[near]
        lo = float(loads.min())
        # Lower the level while it keeps k slots (bisection), to keep few candidates.
        for _ in range(64):
            mid = (lo + hi) / 2
            if mid <= lo or mid >= hi:
                break
            found = _slots_below(loads, mid, cost).sum()
            if found >= k:
                hi = mid
                if found == k:
                    break
            else:
                lo = mid
        counts = _slots_below(loads, hi, cost)
        local = np.repeat(np.arange(len(near)), counts)
        # t = 0, 1, ... within each shard's run of slots.
        first = np.repeat(np.cumsum(counts) - counts, counts)
        t = np.arange(len(local), dtype=np.int64) - first
        # Rounded, so that loads equal but for rounding tie, and the lower index wins.
        value = np.round(loads[local] + t * cost, 9)
        chosen = near[local[np.lexsort((local, value))[:k]]]
        self.loads = self.loads + np.bincount(chosen, minlength=n) * cost
        return chosen.astype(np.int32)


def _slots_below(loads: np.ndarray, level: float, cost: float) -> np.ndarray:
    """Per shard, the number of slots load + t * cost <= level."""
    room = np.floor((level - loads) / cost) + 1
    return np.maximum(room, 0).astype(np.int64)


class ShardDigests:
    """Shard ids from (shard index, seq_hash) pairs streamed sorted by both.

    The same digest as `shard_id`: sha256 of the settings key, then b"\\0" + hash
    for every member in hash order.
    """

    def __init__(self, n_shards: int, key: str) -> None:
        self._hashers = [hashlib.sha256(key.encode()) for _ in range(n_shards)]

    def update(self, shards: np.ndarray, hashes: pa.Array) -> None:
        if not len(hashes):
            return
        widths = pc.utf8_length(hashes)
        width = pc.min(widths).as_py()
        runs = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1], True])
        if width == pc.max(widths).as_py() and width and not hashes.null_count:
            # Fixed-width hashes: one buffer of b"\0" + hash records, hashed per run.
            data = np.frombuffer(_ascii_bytes(hashes), dtype=np.uint8)
            records = np.zeros((len(hashes), width + 1), dtype=np.uint8)
            records[:, 1:] = data.reshape(len(hashes), width)
            for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
                self._hashers[int(shards[a])].update(records[a:b].tobytes())
            return
        values = hashes.to_pylist()
        for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
            hasher = self._hashers[int(shards[a])]
            for h in values[a:b]:
                hasher.update(b"\0" + h.encode())

    @property
    def n_shards(self) -> int:
        return len(self._hashers)

    def id(self, shard: int) -> str:
        """The id of one shard (all its members given)."""
        return self._hashers[shard].hexdigest()[:20]


def _ascii_bytes(strings: pa.Array | pa.ChunkedArray) -> bytes:
    """The concatenated bytes of a string array's values (no separators)."""
    if isinstance(strings, pa.ChunkedArray):
        return b"".join(_ascii_bytes(c) for c in strings.chunks)
    large = strings.cast(pa.large_string())
    offsets = np.frombuffer(large.buffers()[1], dtype=np.int64)[
        large.offset:large.offset + len(large) + 1]
    return large.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


def retry_token_budget(max_tokens: int, attempt: int) -> int:
    """Token budget of a batch on the given attempt (1-based): halved on every retry.

    A GPU job that ran out of memory is retried by Snakemake with the next attempt
    number; smaller batches need less activation memory, down to one sequence per
    batch (the inference engine never splits a sequence).
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    return max(1, max_tokens >> (attempt - 1))

