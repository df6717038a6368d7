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
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esmpipe.engine.device import free_device_memory, is_oom
from esmpipe.engine.runner import Progress, run_batches
from esmpipe.io.structure import to_pdb
from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.geometry import atom14_to_atom37
from esmpipe.status import OK, OUT_OF_MEMORY, TOO_LONG

log = logging.getLogger(__name__)

# Bump when a change alters the values this engine writes: cached results carry it,
# and a cache part of another version is computed again.
OUTPUT_VERSION = 1

DEFAULT_MAX_LENGTH = 1280
DEFAULT_PADDING_BOUND = 1.1
CA = rc.atom_order["CA"]


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
    ) -> None:
        self.model = model
        self.padding_bound = padding_bound
        if max_batch_size is None and self.device.type == "cpu":
            max_batch_size = 1
        self.max_batch_size = max_batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.num_recycles = num_recycles
        self.chunk_size = chunk_size
        if chunk_size is not None:
            model.set_chunk_size(chunk_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _fold_batch(self, sequences: list[str]) -> list[FoldResult]:
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
        results = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            ca = plddt[i, :n, CA].astype(np.float32)
            own_pae = pae[i, :n, :n]
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
            progress=Progress("fold", lengths, costs),
            lengths=lengths,
            costs=costs,
        ):
            yield [runnable[m] for m in batch], results
