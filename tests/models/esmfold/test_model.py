"""EsmForProteinFolding against `transformers` on a tiny random checkpoint; batch behaviour."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from transformers.models.esm.modeling_esmfold import EsmForProteinFoldingOutput as ReferenceOutput

from esmpipe.models import EsmConfig, EsmForProteinFolding
from esmpipe.models.esmfold.modeling_esmfold import EsmForProteinFoldingOutput

from . import tiny_config_dict

ATOL = 1e-4
AA = "ARNDCQEGHILKMFPSTWYV"
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPV", "PEPTIDEWCYKRNLLA"]


def _ids(seq: str) -> torch.Tensor:
    return torch.tensor([[AA.index(c) for c in seq]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random ESMFold saved by `transformers` (fp32 stem), and the reference model."""
    torch.manual_seed(0)
    reference = transformers.EsmForProteinFolding(transformers.EsmConfig(**tiny_config_dict()))
    with torch.no_grad():
        # The reference zero-initialises many output layers; noise makes every weight count.
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reference.eval()
    folder = tmp_path_factory.mktemp("tiny_esmfold")
    reference.save_pretrained(folder)
    return folder, reference


@pytest.fixture(scope="module")
def model(checkpoint):
    folder, _ = checkpoint
    return EsmForProteinFolding.from_pretrained(folder)


def test_state_dict_matches_reference(checkpoint, model):
    _, reference = checkpoint
    ours = model.state_dict()
    theirs = reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key].to(value.dtype), value), key
    assert not model.training


def test_parity_single_sequence(checkpoint, model):
    _, reference = checkpoint
    ids = _ids(SEQUENCES[0])
    with torch.no_grad():
        ref = reference(ids, num_recycles=1)
        out = model(ids, num_recycles=1)
    for key in ("positions", "angles", "unnormalized_angles", "frames", "sidechain_frames",
                "states", "s_s", "s_z", "plddt", "distogram_logits", "lm_logits",
                "lddt_head", "ptm_logits", "predicted_aligned_error",
                "aligned_confidence_probs"):  # fmt: skip
        torch.testing.assert_close(out[key], ref[key], atol=ATOL, rtol=0, msg=key)
    for key in ("aatype", "residue_index", "residx_atom14_to_atom37", "residx_atom37_to_atom14",
                "atom14_atom_exists", "atom37_atom_exists"):  # fmt: skip
        assert torch.equal(out[key].to(ref[key].dtype), ref[key]), key
    # NOTE: ptm and max_predicted_aligned_error are per protein here, a scalar there.
    assert out.ptm.shape == (1,) and out.max_predicted_aligned_error.shape == (1,)
    torch.testing.assert_close(out.ptm[0], ref["ptm"], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out.max_predicted_aligned_error[0], ref["max_predicted_aligned_error"], atol=ATOL, rtol=0
    )
    assert out.plddt.shape == (1, len(SEQUENCES[0]), 37)
    assert 0 <= out.plddt.min() and out.plddt.max() <= 1


def test_default_recycles_match_reference(checkpoint, model):
    _, reference = checkpoint
    ids = _ids(SEQUENCES[2])
    with torch.no_grad():
        ref = reference(ids)
        out = model(ids)
    torch.testing.assert_close(out.positions, ref["positions"], atol=ATOL, rtol=0)


def test_output_has_every_documented_field(model):
    with torch.no_grad():
        out = model(_ids(SEQUENCES[1]), num_recycles=0)
    documented = {f.name for f in dataclasses.fields(ReferenceOutput)}
    assert documented <= {f.name for f in dataclasses.fields(EsmForProteinFoldingOutput)}
    missing = [name for name in sorted(documented) if getattr(out, name, None) is None]
    assert not missing
    assert out.mean_plddt.shape == (1,)


def test_batch_matches_each_protein_alone(model):
    with torch.no_grad():
        batch = model.infer(SEQUENCES, num_recycles=1)
        for i, seq in enumerate(SEQUENCES):
            alone = model.infer(seq, num_recycles=1)
            n = len(seq)
            torch.testing.assert_close(
                batch.positions[:, i, :n], alone.positions[:, 0], atol=ATOL, rtol=0
            )
            torch.testing.assert_close(batch.plddt[i, :n], alone.plddt[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(batch.ptm[i], alone.ptm[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(batch.mean_plddt[i], alone.mean_plddt[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(
                batch.predicted_aligned_error[i, :n, :n],
                alone.predicted_aligned_error[0],
                atol=ATOL,
                rtol=0,
            )
            # Padding carries no atoms and no error.
            assert torch.all(batch.atom37_atom_exists[i, n:] == 0)
            assert torch.all(batch.predicted_aligned_error[i, n:] == 0)


def test_chunked_model_matches_unchunked(model):
    ids = _ids(SEQUENCES[0])
    try:
        with torch.no_grad():
            model.set_chunk_size(None)
            full = model(ids, num_recycles=1)
            model.set_chunk_size(5)
            chunked = model(ids, num_recycles=1)
    finally:
        model.set_chunk_size(None)
    for key in ("positions", "plddt", "ptm", "predicted_aligned_error", "distogram_logits"):
        torch.testing.assert_close(chunked[key], full[key], atol=ATOL, rtol=0, msg=key)


def test_save_pretrained_loads_in_transformers(model, tmp_path):
    model.save_pretrained(tmp_path)
    theirs = transformers.EsmForProteinFolding.from_pretrained(tmp_path)
    ours = model.state_dict()
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, ours[key].to(value.dtype)), key


def test_fp16_stem_shapes_and_dtypes(tmp_path):
    config = EsmConfig.from_dict(tiny_config_dict(fp16_esm=True))
    torch.manual_seed(0)
    model = EsmForProteinFolding(config).eval()
    assert {p.dtype for p in model.esm.parameters()} == {torch.float16}
    assert model.trunk.trunk2sm_s.weight.dtype == torch.float32
    with torch.no_grad():
        out = model(_ids("MKVLA"), num_recycles=0)
    assert out.positions.dtype == torch.float32 and out.positions.shape == (2, 1, 5, 14, 3)
    assert out.plddt.dtype == torch.float32 and torch.isfinite(out.plddt).all()

    # The fp16 stem survives a round trip, and dtype=float32 upcasts it on loading.
    model.save_pretrained(tmp_path)
    again = EsmForProteinFolding.from_pretrained(tmp_path)
    assert again.esm.embeddings.word_embeddings.weight.dtype == torch.float16
    assert again.trunk.trunk2sm_s.weight.dtype == torch.float32
    upcast = EsmForProteinFolding.from_pretrained(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    torch.testing.assert_close(
        upcast.esm.embeddings.word_embeddings.weight,
        model.esm.embeddings.word_embeddings.weight.float(),
    )


def test_rejects_non_folding_config():
    config = EsmConfig.from_dict({**tiny_config_dict(), "is_folding_model": False})
    with pytest.raises(ValueError, match="is_folding_model"):
        EsmForProteinFolding(config)


def test_loads_published_layout(checkpoint, model, tmp_path):
    """esmfold_v1's layout: fp16 stem tensors, a stored position_ids, maybe no af2_to_esm."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder, _ = checkpoint
    tensors = load_file(str(folder / "model.safetensors"))
    tensors = {k: (v.half() if k.startswith("esm.") and v.is_floating_point() else v)
               for k, v in tensors.items() if k != "af2_to_esm"}  # fmt: skip
    tensors["esm.embeddings.position_ids"] = torch.arange(1026)[None]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(folder / "config.json", tmp_path / "config.json")

    loaded = EsmForProteinFolding.from_pretrained(tmp_path)
    assert torch.equal(loaded.af2_to_esm, model.af2_to_esm)
    # fp16_esm is false in this config: the fp16 stem is upcast on loading.
    assert loaded.esm.embeddings.word_embeddings.weight.dtype == torch.float32
    ids = _ids(SEQUENCES[1])
    with torch.no_grad():
        expected = model(ids, num_recycles=0)
        out = loaded(ids, num_recycles=0)
    # Only the stem's fp16 rounding separates the two.
    torch.testing.assert_close(out.positions, expected.positions, atol=0.05, rtol=0)
    assert torch.isfinite(out.plddt).all()


def test_masking_pattern_matches_reference(checkpoint, model):
    # The reference's forward fails on any masking_pattern (it tests a tensor's truth
    # value), so the masking itself is compared, and the effect checked on ours.
    _, reference = checkpoint
    ids = _ids(SEQUENCES[2])
    pattern = torch.zeros_like(ids)
    pattern[0, [1, 4, 9]] = 1
    mask = torch.ones_like(ids)
    esmaa = model.af2_idx_to_esm_idx(ids, mask)
    assert torch.equal(esmaa, reference.af2_idx_to_esm_idx(ids, mask))
    ours = model.bert_mask(ids, esmaa, pattern)
    theirs = reference.bert_mask(ids, esmaa, mask, pattern)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        plain = model(ids, num_recycles=0)
        masked = model(ids, masking_pattern=pattern, num_recycles=0)
    assert not torch.allclose(plain.s_s, masked.s_s)
    assert masked.mlm_targets[0, [1, 4, 9]].tolist() == ids[0, [1, 4, 9]].tolist()
    assert plain.mlm_targets is None
