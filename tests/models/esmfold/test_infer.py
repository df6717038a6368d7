"""`infer` on amino-acid strings: letters, unknowns, complexes, padding, atom37 output."""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm.openfold_utils import atom14_to_atom37 as reference_atom14_to_atom37

from esmpipe.models import EsmConfig, EsmForProteinFolding
from esmpipe.models.esmfold.modeling_esmfold import (
    batch_encode_sequences,
    encode_sequence,
    output_to_atom37,
)

from . import tiny_config_dict


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EsmForProteinFolding(EsmConfig.from_dict(tiny_config_dict())).eval()


def test_unknown_and_lowercase_letters():
    aatype, residx, linker_mask, chain_index = encode_sequence("ARXBZUOJa")
    # A R, then X B Z U O J are unknown (20); lowercase reads as uppercase.
    assert aatype.tolist() == [0, 1, 20, 20, 20, 20, 20, 20, 0]
    assert residx.tolist() == list(range(9))
    assert linker_mask.tolist() == [1.0] * 9
    assert chain_index.tolist() == [0] * 9


@pytest.mark.parametrize("bad", ["MKV*", "MK V", "MK-V", "MK1"])
def test_non_letters_are_rejected(bad):
    with pytest.raises(ValueError, match="not residue letters"):
        encode_sequence(bad)


def test_empty_chain_is_rejected():
    with pytest.raises(ValueError, match="empty chain"):
        encode_sequence("MKV::AAA")


def test_complex_encoding():
    aatype, residx, linker_mask, chain_index = encode_sequence(
        "MKV:AC", residue_index_offset=100, chain_linker="GG"
    )
    assert len(aatype) == 3 + 2 + 2
    assert aatype[3:5].tolist() == [7, 7]  # glycine linker
    assert residx.tolist() == [0, 1, 2, 3, 4, 105, 106]
    assert linker_mask.tolist() == [1, 1, 1, 0, 0, 1, 1]
    assert chain_index.tolist() == [0, 0, 0, 0, 0, 1, 1]
    # No offset and no linker: chains simply concatenate.
    aatype, residx, linker_mask, _ = encode_sequence("MK:AC", None, None)
    assert residx.tolist() == [0, 1, 2, 3] and linker_mask.tolist() == [1, 1, 1, 1]


def test_batch_encoding_pads():
    aatype, mask, residx, linker_mask, chain_index = batch_encode_sequences(["MKV", "A:C"], 10, "G")
    assert aatype.shape == (2, 3)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    _, mask, _, _, chain_index = batch_encode_sequences(["MKVLA", "AC"])
    assert mask[1].tolist() == [1, 1, 0, 0, 0]
    assert chain_index[1].tolist() == [0, 0, -1, -1, -1]
    with pytest.raises(ValueError, match="no sequences"):
        batch_encode_sequences([])


def test_infer_single_and_batch(model):
    out = model.infer(["MKTAYIAKQ", "GSX"], num_recycles=0)
    assert out.positions.shape == (2, 2, 9, 14, 3)
    assert out.plddt.shape == (2, 9, 37)
    assert out.ptm.shape == (2,) and out.mean_plddt.shape == (2,)
    assert out.chain_index[1].tolist() == [0, 0, 0] + [-1] * 6
    assert out.aatype[1, 2].item() == 20
    # Unknown residues have no atoms; padding has none either.
    assert out.atom37_atom_exists[1, 2:].sum() == 0
    expected = (out.plddt[0] * out.atom37_atom_exists[0]).sum() / out.atom37_atom_exists[0].sum()
    torch.testing.assert_close(out.mean_plddt[0], expected)
    single = model.infer("MKTAYIAKQ", num_recycles=0)
    assert single.positions.shape == (2, 1, 9, 14, 3)


def test_infer_complex(model):
    a, b = "MKTAYIAK", "GSHMLE"
    out = model.infer(f"{a}:{b}", num_recycles=0, residue_index_offset=512, chain_linker="G" * 25)
    n = len(a) + 25 + len(b)
    assert out.aatype.shape == (1, n)
    linker = slice(len(a), len(a) + 25)
    assert torch.all(out.atom37_atom_exists[0, linker] == 0)
    assert torch.all(out.atom37_atom_exists[0, : len(a)].sum(-1) > 0)
    assert out.chain_index[0].tolist() == [0] * (len(a) + 25) + [1] * len(b)
    residx = out.residue_index[0]
    assert residx[len(a) + 25].item() - residx[len(a) - 1].item() == 512 + 26
    # mean pLDDT skips the linker atoms.
    exists = out.atom37_atom_exists[0]
    torch.testing.assert_close(out.mean_plddt[0], (out.plddt[0] * exists).sum() / exists.sum())


def test_infer_accepts_explicit_residue_index(model):
    out = model.infer("MKTA", residx=[torch.tensor([0, 1, 5, 6])], num_recycles=0)
    assert out.residue_index[0].tolist() == [0, 1, 5, 6]
    out = model.infer("MKTA", residx=torch.tensor([3, 4, 5, 6]), num_recycles=0)
    assert out.residue_index[0].tolist() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="residx"):
        model.infer("MKTA", residx=torch.arange(3), num_recycles=0)


def test_output_to_atom37(model):
    out = model.infer(["MKTAYW", "GC"], num_recycles=0)
    positions, mask = output_to_atom37(out)
    assert positions.shape == (2, 6, 37, 3) and mask.shape == (2, 6, 37)
    reference = reference_atom14_to_atom37(
        out.positions[-1],
        {"residx_atom37_to_atom14": out.residx_atom37_to_atom14,
         "atom37_atom_exists": out.atom37_atom_exists},
    )  # fmt: skip
    torch.testing.assert_close(positions, reference)
    assert torch.all(positions[1, 2:] == 0)


def test_tiny_esmfold_preset_folds():
    from esmpipe.models.presets import get_preset

    torch.manual_seed(0)
    model = EsmForProteinFolding(EsmConfig.from_dict(get_preset("tiny-esmfold").config_dict()))
    out = model.eval().infer(["MKTAYIAK", "GSH"])
    assert out.positions.shape[1:] == (2, 8, 14, 3)
    assert torch.isfinite(out.positions).all() and torch.isfinite(out.ptm).all()
