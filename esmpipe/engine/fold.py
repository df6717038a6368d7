"""Batched ESMFold: per-protein confidence summaries and PDB text.

Per batch, `EsmForProteinFolding.infer(sequences, num_recycles=...)`; then for
each protein, cropped to its own length n (padding never enters a summary):

- `plddt` [n]: the CA atom's pLDDT x 100 (0-100), the per-residue value
  ESMFold and AlphaFold2 report;
- `mean_plddt`: the mean of that over the protein's residues. NOTE: the
  reference's `mean_plddt` averages over all existing atoms; the CA mean is
  the convention of the ESM Metagenomic Atlas and AlphaFold DB tables;
- `ptm`: the model's per-protein pTM (computed on the protein's own pair
  logits; the reference port gives one number per batch);
- `max_pae`, `mean_pae`: max and mean of the [n, n] predicted aligned error;
- `pdb`: atom37 coordinates (`geometry.atom14_to_atom37` of the last
  structure-module block) written by `esmpipe.io.structure.to_pdb`, residues
  numbered from 1, B-factor = per-atom pLDDT x 100.

Batches (`plan_batches`): the trunk's time grows as n * L**3 (the triangle
updates) and its memory as n * L**2 * c_z (the pair state), for n proteins padded
to L residues. Proteins are sorted longest first and a batch takes the next
protein only while, with it, the padded cost stays within `padding_bound`
(default 1.1, i.e. 10%) of the members' own cost, in both terms:

    n * L_max**3 <= bound * sum(L_i**3)   and   n * L_max**2 <= bound * sum(L_i**2)

and within the memory budget `n * L_max**2 <= max_tokens**2`. On a CPU a batch is
one protein: a CPU's cores are already busy with one protein's L**3 matmuls, so
batching buys nothing there (measured: see the notes of issue 8), while padding
costs its full price (the old rule, n * L**2 <= 1024**2, packed the issue's 11
proteins of 136-300 residues into one batch padded to 300: 2.5x slower than one
at a time). On a GPU, short chains do not fill the device and batching them
amortises kernel launches; the bound keeps the padding waste under 10%.
Sequences longer than
`max_length` (default 1280, the ESM Metagenomic Atlas limit) get status
"too_long".

Memory (`trunk_memory`, `auto_chunk_size`): the trunk's memory is counted in
units of one protein's pair state, U = L**2 * c_z * itemsize bytes (L the padded
length; 23 MiB at L = 300 for c_z 64 in fp32, 488 MiB at L = 1000 for c_z 128):

- held through the trunk, per protein: `PAIR_COPIES` = 7 U (the initial and the
  recycled pair states, the current one, the update being added, and the pTM
  and distogram heads' [L, L, 64] logits and probabilities at the end);
- a block's peak temporaries: the triangle multiplication's four edge
  projections, 4 U (one protein at a time, not chunked), plus 4 U of output
  temporaries times the chunked fraction f = min(1, chunk / L); or the pair
  transition's 6 U x f per protein of the batch (its 4x-wide hidden layer), the
  larger of the two. In float16/bfloat16 the product's operands are fp32 copies
  (+4 U of half-width units, counted as 2 U more).

With no `--chunk-size`, each batch runs unchunked when that fits in
`MEMORY_HEADROOM` (80%) of the free device memory (CUDA: free plus cached;
CPU: MemAvailable), else with the largest power-of-two chunk that fits, never
below `MIN_CHUNK_SIZE` rows. Out of memory (the shared ladder of
`esmpipe.engine.runner`): the batch is split in halves; a single protein is then
retried with the chunk size halved each time, from half its chunk (or half its
length when it ran unchunked) down to `MIN_CHUNK_SIZE`; one that still does not
fit gets status "out_of_memory".

Bad output: a protein with any non-finite value (NaN or inf) in its own
positions (existing atoms), pLDDT, PAE or pTM gets status "non_finite" and no
structure or confidence values, never a NaN in the tables. `flags` (list of
strings, empty when none) marks values that are finite but suspect:

- `suspect_ptm`: pTM >= `SUSPECT_PTM_MIN` (0.7, the range usually read as a
  confident fold) while mean pLDDT < `SUSPECT_PLDDT_MAX` (50, "very low" in
  AlphaFold's bands). The two heads then disagree; the known case is a long
  chain folded without chunking that gets a pTM near 1 for a meaningless
  structure. The structure is kept; the report counts flagged structures.

Recycling: `early_stop_tolerance` (Angstrom, opt-in; None runs every recycle
and equals the reference) stops recycling once the C-alpha structure changes by
less than it between passes (measure: `esmpipe.models.esmfold.trunk`);
`recycles` records the recycles actually run, per protein (for a batch under
early stop, the batch's, since recycling is batch-wide).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from esmpipe.engine.device import free_device_memory, is_oom
from esmpipe.engine.runner import Progress, run_batches
from esmpipe.io.structure import to_pdb
from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.geometry import atom14_to_atom37
from esmpipe.status import NON_FINITE, OK, OUT_OF_MEMORY, TOO_LONG

log = logging.getLogger(__name__)

# Bump when a change alters the values this engine writes: cached results carry it,
# and a cache part of another version is computed again.
# 2: `flags`, `recycles`, status non_finite.
OUTPUT_VERSION = 2

DEFAULT_MAX_LENGTH = 1280
DEFAULT_PADDING_BOUND = 1.1
CA = rc.atom_order["CA"]

PAIR_COPIES = 7
MIN_CHUNK_SIZE = 16
MEMORY_HEADROOM = 0.8

SUSPECT_PTM = "suspect_ptm"
SUSPECT_PTM_MIN = 0.7  # pTM at or above: the model claims a confident fold ...
SUSPECT_PLDDT_MAX = 50.0  # ... mean pLDDT (0-100) below: ... that its pLDDT denies


def quality_flags(ptm: float, mean_plddt: float) -> list[str]:
    """The `flags` of a finite result (module docstring)."""
    flags = []
    if ptm >= SUSPECT_PTM_MIN and mean_plddt < SUSPECT_PLDDT_MAX:
        flags.append(SUSPECT_PTM)
    return flags


def trunk_memory(
    n: int, length: int, c_z: int, itemsize: int, chunk_size: int | None
) -> int:
    """Bytes the trunk needs for n proteins padded to `length` (module docstring)."""
    unit = length * length * c_z * itemsize
    f = 1.0 if chunk_size is None else min(1.0, chunk_size / max(length, 1))
    tri_mul = 4 + 4 * f + (2 if itemsize < 4 else 0)
    temporaries = max(tri_mul, 6 * n * f)
    return int(unit * (PAIR_COPIES * n + temporaries))


def auto_chunk_size(
    n: int,
    length: int,
    c_z: int,
    itemsize: int,
    free_bytes: int | None,
    *,
    min_chunk_size: int = MIN_CHUNK_SIZE,
) -> int | None:
    """None (unchunked) when the batch fits in `MEMORY_HEADROOM` of `free_bytes`, else
    the largest power-of-two chunk that fits, at least `min_chunk_size`.
    `free_bytes` None (unknown) means unchunked."""
    if free_bytes is None:
        return None
    budget = MEMORY_HEADROOM * free_bytes
    if trunk_memory(n, length, c_z, itemsize, None) <= budget:
        return None
    chunk = 1 << max(0, (length - 1).bit_length() - 1)  # largest power of two < length
    while chunk > min_chunk_size and trunk_memory(n, length, c_z, itemsize, chunk) > budget:
        chunk //= 2
    return max(chunk, min_chunk_size)


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: CUDA free plus this process's cached
    blocks; on the CPU, MemAvailable (None where /proc/meminfo is absent)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def plan_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    padding_bound: float = DEFAULT_PADDING_BOUND,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Indices into `lengths` grouped by the rule of the module docstring.

    Longest first (ties in input order), every index exactly once; a batch's
    padded L**3 and L**2 costs stay within `padding_bound` of its members' own,
    and n * L_max**2 within `max_tokens**2`. `max_batch_size=1` folds one
    protein at a time (what the engine does on a CPU).
    """
    if padding_bound < 1:
        raise ValueError(f"padding_bound must be >= 1, got {padding_bound}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    cubes = squares = 0.0
    for i in order:
        n = float(lengths[i])
        if current:
            padded = float(lengths[current[0]])  # longest first: the first member's length
            size = len(current) + 1
            fits = (
                (max_batch_size is None or size <= max_batch_size)
                and size * padded**2 <= float(max_tokens) ** 2
                and size * padded**3 <= padding_bound * (cubes + n**3)
                and size * padded**2 <= padding_bound * (squares + n**2)
            )
            if not fits:
                batches.append(current)
                current, cubes, squares = [], 0.0, 0.0
        current.append(i)
        cubes += n**3
        squares += n**2
    if current:
        batches.append(current)
    return batches


@dataclass
class FoldResult:
    status: str
    mean_plddt: float | None = None  # 0-100
    ptm: float | None = None  # 0-1
    plddt: np.ndarray | None = None  # [n] float32, 0-100
    max_pae: float | None = None
    mean_pae: float | None = None
    pdb: str | None = None
    flags: list[str] = field(default_factory=list)
    recycles: int | None = None  # recycles run; None when the model did not run


class FoldingEngine:
    """Folds sequences with an `EsmForProteinFolding` in batches of similar lengths.

    The model is used as given (device, dtype and eval mode are the caller's);
    `chunk_size` is applied to the trunk here, since it is a memory setting.
    `max_batch_size` None means one protein at a time on a CPU, no limit on a
    GPU (the padding bound and `max_tokens` still apply).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_tokens: int = 1024,
        max_length: int = DEFAULT_MAX_LENGTH,
        num_recycles: int | None = None,
        chunk_size: int | None = None,
        padding_bound: float = DEFAULT_PADDING_BOUND,
        max_batch_size: int | None = None,
        early_stop_tolerance: float | None = None,
        min_chunk_size: int = MIN_CHUNK_SIZE,
        free_memory: Callable[[], int | None] | None = None,
    ) -> None:
        self.model = model
        self.min_chunk_size = min_chunk_size
        # Injectable for tests: free device memory in bytes (None: unknown).
        self.free_memory = free_memory or (lambda: free_memory_bytes(self.device))
        # Set by the out-of-memory ladder around a single protein's retry.
        self._forced_chunk: int | None = None
        self.last_chunk_size: int | None = None
        self.padding_bound = padding_bound
        if max_batch_size is None and self.device.type == "cpu":
            max_batch_size = 1
        self.max_batch_size = max_batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.num_recycles = num_recycles
        self.chunk_size = chunk_size
        # Applied to the model per batch (as the chunk size), so that an engine without
        # early stop never inherits another engine's tolerance on a shared model.
        if early_stop_tolerance is not None and not early_stop_tolerance >= 0:
            raise ValueError(f"early_stop_tolerance must be >= 0, got {early_stop_tolerance}")
        self.early_stop_tolerance = early_stop_tolerance

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chunk_size_for(self, n: int, length: int) -> int | None:
        """The trunk chunk size for n proteins padded to `length`: the ladder's, else
        `chunk_size` as given, else automatic (module docstring)."""
        if self._forced_chunk is not None:
            return self._forced_chunk
        if self.chunk_size is not None:
            return self.chunk_size
        trunk = self.model.config.esmfold_config.trunk
        itemsize = next(self.model.trunk.parameters()).element_size()
        return auto_chunk_size(n, length, trunk.pairwise_state_dim, itemsize,
                               self.free_memory(), min_chunk_size=self.min_chunk_size)  # fmt: skip

    def _chunk_fallbacks(self, length: int) -> Iterator[AbstractContextManager]:
        """Halved chunk sizes for one protein that ran out of memory, down to the floor."""
        start = self.chunk_size_for(1, length)
        chunk = (length if start is None else min(start, length)) // 2
        while chunk >= self.min_chunk_size:
            yield self._forcing_chunk(chunk)
            chunk //= 2

    @contextmanager
    def _forcing_chunk(self, chunk: int) -> Iterator[None]:
        self._forced_chunk = chunk
        try:
            yield
        finally:
            self._forced_chunk = None

    @torch.inference_mode()
    def _fold_batch(self, sequences: list[str]) -> list[FoldResult]:
        chunk = self.chunk_size_for(len(sequences), max(len(seq) for seq in sequences))
        self.model.set_chunk_size(chunk)
        self.model.set_early_stop_tolerance(self.early_stop_tolerance)
        self.last_chunk_size = chunk
        out = self.model.infer(sequences, num_recycles=self.num_recycles)
        batch = {
            "residx_atom37_to_atom14": out.residx_atom37_to_atom14,
            "atom37_atom_exists": out.atom37_atom_exists,
        }
        # [B, L, 37, 3] in fp32: coordinates are geometry, never reduced precision.
        positions = atom14_to_atom37(out.positions[-1].float(), batch).cpu().numpy()
        exists = out.atom37_atom_exists.cpu().numpy()
        aatype = out.aatype.cpu().numpy()
        # NOTE: the residue tables give unknown residues (X, B, Z, J, U, O) no atoms, so
        # the reference's PDB silently drops them. We keep them as a CA-only UNK residue
        # (atom14 slot 1 is the frame origin, the CA, for every residue type), so the
        # PDB has one residue per sequence letter, as the `plddt` column does.
        unknown = aatype == rc.unk_restype_index  # [B, L]
        if unknown.any():
            ca14 = out.positions[-1][..., 1, :].float().cpu().numpy()  # [B, L, 3]
            positions[unknown, CA] = ca14[unknown]
            exists = exists.copy()
            exists[unknown, CA] = 1.0
        residue_index = out.residue_index.cpu().numpy()
        plddt = (out.plddt.float() * 100).cpu().numpy()  # [B, L, 37]
        pae = out.predicted_aligned_error.float().cpu().numpy()  # [B, L, L]
        ptm = out.ptm.float().cpu().numpy()  # [B]
        recycles = int(out.recycles)
        results = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            ca = plddt[i, :n, CA].astype(np.float32)
            own_pae = pae[i, :n, :n]
            real = exists[i, :n] > 0
            finite = (
                np.isfinite(positions[i, :n][real]).all()
                and np.isfinite(plddt[i, :n][real]).all()
                and np.isfinite(ca).all()
                and np.isfinite(own_pae).all()
                and np.isfinite(ptm[i])
            )
            if not finite:
                log.warning("non-finite output for a sequence of %d residues", n)
                results.append(FoldResult(NON_FINITE, recycles=recycles))
                continue
            pdb = to_pdb(
                aatype[i, :n],
                positions[i, :n],
                exists[i, :n],
                residue_index[i, :n] + 1,
                plddt[i, :n],
            )
            results.append(
                FoldResult(
                    status=OK,
                    mean_plddt=float(ca.mean()),
                    ptm=float(ptm[i]),
                    plddt=ca,
                    max_pae=float(own_pae.max()),
                    mean_pae=float(own_pae.mean()),
                    pdb=pdb,
                    flags=quality_flags(float(ptm[i]), float(ca.mean())),
                    recycles=recycles,
                )
            )
        return results

    def fold(self, sequences: Sequence[str]) -> list[FoldResult]:
        """One result per input sequence, in input order."""
        results: list[FoldResult | None] = [None] * len(sequences)
        for indices, batch in self.run(sequences):
            for i, result in zip(indices, batch, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def run(self, sequences: Sequence[str]) -> Iterator[tuple[list[int], list[FoldResult]]]:
        """Results batch by batch as `(indices into sequences, results)`: first the
        sequences over the length limit, then each batch as soon as it is folded."""
        runnable = [i for i, seq in enumerate(sequences) if len(seq) <= self.max_length]
        rejected = sorted(set(range(len(sequences))) - set(runnable))
        if rejected:
            yield rejected, [FoldResult(TOO_LONG) for _ in rejected]
        lengths = [len(sequences[i]) for i in runnable]
        costs = [float(n) ** 3 for n in lengths]
        batches = plan_batches(lengths, max_tokens=self.max_tokens,
                               padding_bound=self.padding_bound,
                               max_batch_size=self.max_batch_size)  # fmt: skip
        for batch, results in run_batches(
            batches,
            lambda members: self._fold_batch([sequences[runnable[m]] for m in members]),
            is_oom=is_oom,
            free_memory=lambda: free_device_memory(self.device),
            out_of_memory=lambda member: FoldResult(OUT_OF_MEMORY),
            fallbacks=lambda member: self._chunk_fallbacks(lengths[member]),
            progress=Progress("fold", lengths, costs),
            lengths=lengths,
            costs=costs,
        ):
            yield [runnable[m] for m in batch], results
