"""pLDDT, pTM and PAE against the reference, and per-protein scoring under padding."""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm.modeling_esmfold import categorical_lddt
from transformers.models.esm.openfold_utils import compute_predicted_aligned_error, compute_tm

from esmpipe.models.esmfold.confidence import (
    plddt_from_logits,
    predicted_aligned_error,
    predicted_tm,
)


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_plddt_matches_reference_and_scale():
    logits = _logits(2, 7, 37, 50)
    out = plddt_from_logits(logits)
    assert out.shape == (2, 7, 37)
    torch.testing.assert_close(out, categorical_lddt(logits, bins=50), atol=1e-6, rtol=0)
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("length", [8, 30])
def test_ptm_single_protein_matches_reference(length):
    logits = _logits(1, length, length, 64, seed=length)
    ours = predicted_tm(logits)
    assert ours.shape == (1,)
    ref = compute_tm(logits, max_bin=31, no_bins=64)
    torch.testing.assert_close(ours[0], ref, atol=1e-6, rtol=0)


def test_ptm_and_pae_are_per_protein_on_own_residues():
    lengths = [5, 12, 20]
    n = max(lengths)
    logits = _logits(len(lengths), n, n, 64, seed=3)
    mask = torch.zeros(len(lengths), n)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ptm = predicted_tm(logits, mask)
    pae = predicted_aligned_error(logits, mask)
    assert ptm.shape == (3,)
    assert pae["max_predicted_aligned_error"].shape == (3,)
    for i, length in enumerate(lengths):
        cropped = logits[i : i + 1, :length, :length]
        ref_ptm = compute_tm(cropped, max_bin=31, no_bins=64)
        torch.testing.assert_close(ptm[i], ref_ptm, atol=1e-6, rtol=0)
        ref = compute_predicted_aligned_error(cropped, max_bin=31, no_bins=64)
        torch.testing.assert_close(
            pae["predicted_aligned_error"][i, :length, :length],
            ref["predicted_aligned_error"][0],
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(
            pae["max_predicted_aligned_error"][i], ref["max_predicted_aligned_error"]
        )
        # Padding contributes nothing.
        assert torch.all(pae["predicted_aligned_error"][i, length:] == 0)
        assert torch.all(pae["aligned_confidence_probs"][i, :, length:] == 0)


def test_padding_logits_do_not_change_scores():
    logits = _logits(1, 10, 10, 64, seed=5)
    mask = torch.ones(1, 10)
    mask[0, 6:] = 0
    garbage = logits.clone()
    garbage[:, 6:] = 1e3
    garbage[:, :, 6:] = -1e3
    assert torch.equal(predicted_tm(logits, mask), predicted_tm(garbage, mask))
    assert torch.equal(
        predicted_aligned_error(logits, mask)["predicted_aligned_error"],
        predicted_aligned_error(garbage, mask)["predicted_aligned_error"],
    )
