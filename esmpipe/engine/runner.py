"""The engine loop shared by `esmpipe embed` and `esmpipe fold`.

An engine (the embedder, the folding engine) decides which sequences run, how
they are batched and how one batch runs; `run_batches` does the rest the same
way for both:

- runs the planned batches in order and yields each batch's results as soon as
  it is done, so that a command can write them as the job progresses (a killed
  job's retry resumes from the last finished batch: `esmpipe.io.partial`);
- the out-of-memory ladder: a batch that runs out of device memory is split in
  halves down to single sequences; a single sequence is retried under each of
  the engine's memory fallbacks in turn (for folding: a smaller trunk chunk
  size), and one that fails them all gets the engine's out-of-memory result.
  A shard never fails because of one sequence;
- progress lines in the job log: sequences and residues done, residues/s and an
  ETA from the engine's cost model (folding time grows as L^3, so a residue
  count alone would mislead the ETA).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


class Progress:
    """Progress lines `<label>: 120/300 sequences (40%), 5,210 residues/s, ETA 0:01:32`.

    `costs` weight the ETA (the engine's cost model per sequence); a line is logged
    at most every `interval` seconds, and always for the last update.
    """

    def __init__(
        self,
        label: str,
        lengths: Sequence[int],
        costs: Sequence[float] | None = None,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = len(lengths)
        self.total_residues = int(sum(lengths))
        self.total_cost = float(sum(costs)) if costs is not None else float(self.total_residues)
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_logged = self.started
        self.done = 0
        self.residues = 0
        self.cost = 0.0

    def update(self, sequences: int, residues: int, cost: float | None = None) -> None:
        self.done += sequences
        self.residues += residues
        self.cost += residues if cost is None else cost
        now = self.clock()
        if self.done >= self.total or now - self.last_logged >= self.interval:
            self.last_logged = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.started, 1e-9)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = (
            f"{self.label}: {self.done:,}/{self.total:,} sequences ({percent:.0f}%), "
            f"{self.residues:,} residues, {self.residues / elapsed:,.0f} residues/s, "
            f"elapsed {_clock(elapsed)}"
        )
        if self.done < self.total and self.cost > 0:
            remaining = elapsed * (self.total_cost - self.cost) / self.cost
            text += f", ETA {_clock(remaining)}"
        return text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_batches(
    batches: Iterable[list[int]],
    run: Callable[[list[int]], list[R]],
    *,
    is_oom: Callable[[BaseException], bool],
    free_memory: Callable[[], None],
    out_of_memory: Callable[[int], R],
    fallbacks: Callable[[int], Iterable[AbstractContextManager]] = lambda index: (),
    progress: Progress | None = None,
    lengths: Sequence[int] | None = None,
    costs: Sequence[float] | None = None,
) -> Iterator[tuple[list[int], list[R]]]:
    """Run each batch (a list of item indices); yield `(batch, results)` per batch, in order.

    `run(indices)` returns one result per index. On out-of-memory (`is_oom`), see the
    module docstring: halves, then `fallbacks(index)` (context managers applied one at
    a time around a single item's retry), then `out_of_memory(index)`. `free_memory`
    is called after every failure. `progress` is updated per batch with the items'
    `lengths` and `costs`.
    """
    for batch in batches:
        results = dict(_run_laddered(batch, run, is_oom, free_memory, out_of_memory, fallbacks))
        ordered = [results[i] for i in batch]
        if progress is not None:
            residues = sum(lengths[i] for i in batch) if lengths is not None else 0
            cost = sum(costs[i] for i in batch) if costs is not None else None
            progress.update(len(batch), residues, cost)
        yield batch, ordered


def _attempt(
    batch: list[int], run: Callable[[list[int]], list[R]], is_oom: Callable[[BaseException], bool]
) -> list[R] | None:
    """`run(batch)`, or None if it ran out of memory (any other error propagates)."""
    try:
        results = run(batch)
    except Exception as err:
        if not is_oom(err):
            raise
        # NOTE: returning (rather than retrying inside the except block) drops the
        # traceback, which holds the failed forward's tensors; retried inside it, the
        # halves would find that memory still taken and fail too.
        return None
    if len(results) != len(batch):
        raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
    return results


def _run_laddered(
    batch: list[int],
    run: Callable[[list[int]], list[R]],
    is_oom: Callable[[BaseException], bool],
    free_memory: Callable[[], None],
    out_of_memory: Callable[[int], R],
    fallbacks: Callable[[int], Iterable[AbstractContextManager]],
) -> Iterator[tuple[int, R]]:
    results = _attempt(batch, run, is_oom)
    if results is not None:
        yield from zip(batch, results, strict=True)
        return
    free_memory()
    if len(batch) > 1:
        half = len(batch) // 2
        log.info("out of memory on a batch of %d; retrying as %d + %d",
                 len(batch), half, len(batch) - half)  # fmt: skip
        for part in (batch[:half], batch[half:]):
            yield from _run_laddered(part, run, is_oom, free_memory, out_of_memory, fallbacks)
        return
    (index,) = batch
    for level, fallback in enumerate(fallbacks(index), start=1):
        with fallback:
            results = _attempt(batch, run, is_oom)
        if results is not None:
            log.info("item %d fitted with memory fallback %d (%s)", index, level, fallback)
            yield index, results[0]
            return
        free_memory()
    log.warning("out of memory on a single item (index %d) with every fallback; skipped", index)
    yield index, out_of_memory(index)
