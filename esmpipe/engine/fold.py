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

Batches: a batch of n sequences padded to L residues costs n * L**2 (the pair
representation), and the budget is `max_tokens**2`: a batch never costs more
than one sequence of `max_tokens` residues. Sequences longer than `max_length`
(default 1280, the ESM Metagenomic Atlas limit) get status "too_long". CUDA
out-of-memory splits a batch in halves down to single sequences; a single
sequence that still does not fit gets status "out_of_memory".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esmpipe.engine.batching import fold_cost, make_batches
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
CA = rc.atom_order["CA"]


@dataclass
class FoldResult:
    status: str
    mean_plddt: float | None = None  # 0-100
    ptm: float | None = None  # 0-1
    plddt: np.ndarray | None = None  # [n] float32, 0-100
    max_pae: float | None = None
    mean_pae: float | None = None
    pdb: str | None = None


class Folder:
    """Folds sequences with an `EsmForProteinFolding` in token-budget batches.

    The model is used as given (device, dtype and eval mode are the caller's);
    `chunk_size` is applied to the trunk here, since it is a memory setting.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_tokens: int = 1024,
        max_length: int = DEFAULT_MAX_LENGTH,
        num_recycles: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.model = model
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
        batches = make_batches(lengths, self.max_tokens**2, fold_cost)
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
