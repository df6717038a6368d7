"""Confidence measures from the heads' logits: pLDDT, pTM and predicted aligned error.

NOTE: the reference (transformers) computes `ptm` as one number for the whole
batch (the best row over every protein and every padding position, with the
TM-score scale d0 set by the padded length) and ignores padding throughout.
Here each protein is scored on its own residues only, which equals cropping
its pair logits to its own length: `ptm` and `max_predicted_aligned_error` are
[B], and padded pairs of the PAE tensors are zero. For one unpadded protein the
values are the reference's.
"""

from __future__ import annotations

import torch

# Predicted aligned error / pTM bins: 64 bins, edges 0..31 Angstrom (AlphaFold2 supplement 1.9.7).
PAE_MAX_BIN = 31.0


def _pae_bin_centers(num_bins: int, max_bin: float, device: torch.device) -> torch.Tensor:
    # [num_bins]: the centres of num_bins - 1 equal bins from 0 to max_bin, plus one beyond.
    step = max_bin / (num_bins - 2)
    return (torch.arange(num_bins, device=device, dtype=torch.float32) + 0.5) * step


def plddt_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Expected lDDT from binned logits: [*, bins] -> [*], on a 0-1 scale.

    The bins split [0, 1] evenly; the value is the probability-weighted mean of
    their centres (the reference's `categorical_lddt`).
    """
    num_bins = logits.shape[-1]
    centres = (torch.arange(num_bins, device=logits.device, dtype=logits.dtype) + 0.5) / num_bins
    return logits.softmax(dim=-1) @ centres


def predicted_tm(
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    max_bin: float = PAE_MAX_BIN,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Predicted TM-score of each protein (AlphaFold2 supplement 1.9.7, eq. 40).

    Inputs:
        logits: [B, L, L, bins] pTM head logits.
        mask: [B, L], 1 for the protein's residues; None means all.
    Output:
        [B]: for each protein, the best alignment row i of
        mean_j E[1 / (1 + (e_ij / d0)^2)], with d0 from the protein's own length
        and both i and j running over its own residues only.
    """
    b, n = logits.shape[:2]
    if mask is None:
        mask = logits.new_ones(b, n)
    mask = mask.to(logits.dtype)
    num_bins = logits.shape[-1]
    centres = _pae_bin_centers(num_bins, max_bin, logits.device).to(logits.dtype)

    # [B]: d0 of the TM-score for each protein's length (lengths below 19 clipped).
    length = mask.sum(dim=-1).clamp(min=19)
    d0 = 1.24 * (length - 15) ** (1.0 / 3) - 1.8
    # [B, bins]
    tm_per_bin = 1.0 / (1 + centres**2 / d0[:, None] ** 2)
    # [B, L, L]
    expected = (logits.softmax(dim=-1) * tm_per_bin[:, None, None, :]).sum(dim=-1)
    weights = mask / (eps + mask.sum(dim=-1, keepdim=True))
    # [B, L]
    per_row = (expected * weights[:, None, :]).sum(dim=-1)
    per_row = per_row.masked_fill(mask == 0, float("-inf"))
    return per_row.amax(dim=-1)


def predicted_aligned_error(
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    max_bin: float = PAE_MAX_BIN,
) -> dict[str, torch.Tensor]:
    """Expected aligned error per residue pair.

    Inputs:
        logits: [B, L, L, bins] pTM head logits.
        mask: [B, L], 1 for residues; None means all.
    Output:
        aligned_confidence_probs [B, L, L, bins], predicted_aligned_error [B, L, L]
        (Angstrom; zero on pairs involving padding), max_predicted_aligned_error [B]:
        the largest value the PAE can take (the last bin's centre), one per protein.
    """
    b, n, _, num_bins = logits.shape
    probs = logits.softmax(dim=-1)
    if mask is not None:
        # [B, L, L, 1]
        pair = (mask[:, :, None] * mask[:, None, :]).to(probs.dtype)[..., None]
        probs = probs * pair
    centres = _pae_bin_centers(num_bins, max_bin, logits.device).to(probs.dtype)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": probs @ centres,
        "max_predicted_aligned_error": centres[-1].expand(b).clone(),
    }
