"""StructureModule against transformers' EsmFoldStructureModule, precision and padding."""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm.configuration_esm import StructureModuleConfig as RefConfig
from transformers.models.esm.modeling_esmfold import EsmFoldStructureModule

from esmpipe.models.esmfold.config import StructureModuleConfig
from esmpipe.models.esmfold.structure_module import StructureModule

SMALL = dict(
    sequence_dim=32,
    pairwise_dim=16,
    ipa_dim=8,
    resnet_dim=16,
    num_heads_ipa=4,
    num_qk_points=4,
    num_v_points=8,
    num_blocks=2,
)
OUTPUT_SHAPES = {
    "frames": (2, 7),
    "sidechain_frames": (2, 8, 4, 4),
    "unnormalized_angles": (2, 7, 2),
    "angles": (2, 7, 2),
    "positions": (2, 14, 3),
    "states": (2, 32),
}
GEOMETRY_KEYS = ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions")
BUFFERS = {"default_frames", "group_idx", "atom_mask", "lit_positions"}


def randomize_(module: torch.nn.Module, std: float = 0.2) -> None:
    """Non-trivial weights: the reference zero-initialises the final layers."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def make_pair(seed: int = 0) -> tuple[EsmFoldStructureModule, StructureModule]:
    torch.manual_seed(seed)
    ref = EsmFoldStructureModule(RefConfig(**SMALL)).eval()
    randomize_(ref)
    ours = StructureModule(StructureModuleConfig(**SMALL)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_inputs(batch: int, length: int, seed: int = 1) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, length, SMALL["sequence_dim"], generator=g)
    z = torch.randn(batch, length, length, SMALL["pairwise_dim"], generator=g)
    aatype = torch.randint(0, 21, (batch, length), generator=g)
    aatype[:, 0] = 20  # the unknown residue X
    aatype[:, 1] = 7  # glycine: no side chain
    return {"single": s, "pair": z}, aatype


@pytest.fixture(scope="module")
def pair() -> tuple[EsmFoldStructureModule, StructureModule]:
    return make_pair()


def test_state_dict_keys_and_shapes_equal_reference(pair) -> None:
    ref, ours = pair
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {
        k: tuple(v.shape) for k, v in ref_sd.items()
    }
    assert "ipa.linear_q_points.weight" in our_sd and "bb_update.linear.weight" in our_sd


def test_buffers_and_their_persistence_equal_reference() -> None:
    ref, ours = make_pair()
    inputs, aatype = make_inputs(1, 5)
    with torch.no_grad():
        ref(inputs, aatype)  # the reference creates its buffers lazily, on first use
    ref_buffers = dict(ref.named_buffers())
    assert set(ref_buffers) == BUFFERS == set(dict(ours.named_buffers()))
    for name, buf in ours.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name].to(buf.dtype), rtol=0, atol=0)
    # Non-persistent on both sides: never written to, nor expected in, a checkpoint.
    assert not BUFFERS & set(ref.state_dict())
    assert not BUFFERS & set(ours.state_dict())


def test_outputs_match_reference(pair) -> None:
    ref, ours = pair
    inputs, aatype = make_inputs(2, 10)
    mask = torch.ones(2, 10)
    mask[1, 7:] = 0.0
    with torch.no_grad():
        expected = ref(dict(inputs), aatype, mask)
        got = ours(dict(inputs), aatype, mask)
    assert set(got) == set(expected) == {*OUTPUT_SHAPES, "single"}
    n = SMALL["num_blocks"]
    for key, tail in OUTPUT_SHAPES.items():
        assert got[key].shape == (n, 2, 10) + tail[1:], key
    assert got["single"].shape == (2, 10, SMALL["sequence_dim"])
    # the weights move the frames: this is not a comparison of identities
    assert got["frames"][..., 4:].abs().max() > 1.0
    # Padded residues (row 1 from 7 on) are compared apart: the reference's -1e5 mask
    # shifts all of a padded query's logits, which rounds them to steps of 2^-7, so
    # their values depend on summation order (ours expands the point distances).
    # They never reach a real residue (test_padding_does_not_change_real_residues).
    real = mask.bool()
    for key in expected:
        assert got[key].dtype == torch.float32, key
        per_block = key != "single"
        ours_real = got[key][:, real] if per_block else got[key][real]
        ref_real = expected[key][:, real] if per_block else expected[key][real]
        torch.testing.assert_close(ours_real, ref_real, rtol=1e-5, atol=1e-5, msg=key)
        assert torch.isfinite(got[key]).all(), key


def test_mask_none_means_all_residues(pair) -> None:
    _, ours = pair
    inputs, aatype = make_inputs(1, 6)
    with torch.no_grad():
        a = ours(dict(inputs), aatype)
        b = ours(dict(inputs), aatype, torch.ones(1, 6))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_padding_does_not_change_real_residues(pair) -> None:
    _, ours = pair
    length, padded = 7, 12
    alone, aatype = make_inputs(1, length, seed=3)
    # Batch: the same protein padded with garbage, next to another, longer protein.
    other, other_aatype = make_inputs(1, padded, seed=4)
    garbage, garbage_aatype = make_inputs(1, padded, seed=5)
    s = torch.cat([garbage["single"] * 10, other["single"]])
    z = torch.cat([garbage["pair"] * 10, other["pair"]])
    s[0, :length] = alone["single"][0]
    z[0, :length, :length] = alone["pair"][0]
    batch_aatype = torch.cat([garbage_aatype, other_aatype])
    batch_aatype[0, :length] = aatype[0]
    mask = torch.ones(2, padded)
    mask[0, length:] = 0.0
    with torch.no_grad():
        single = ours({"single": alone["single"], "pair": alone["pair"]}, aatype)
        batched = ours({"single": s, "pair": z}, batch_aatype, mask)
    for key in (*GEOMETRY_KEYS, "states"):
        torch.testing.assert_close(
            batched[key][:, 0, :length], single[key][:, 0], rtol=0, atol=1e-5, msg=key
        )


def test_geometry_is_fp32_under_bf16_autocast(pair) -> None:
    _, ours = pair
    inputs, aatype = make_inputs(2, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(dict(inputs), aatype, torch.ones(2, 8))
    for key in GEOMETRY_KEYS:
        assert out[key].dtype == torch.float32, key
        assert torch.isfinite(out[key]).all(), key
    with torch.no_grad():
        full = ours(dict(inputs), aatype, torch.ones(2, 8))
    # Same fold to bf16 accuracy of the linear layers (a sanity bound, not parity).
    assert (out["positions"] - full["positions"]).abs().max() < 2.0


def test_low_precision_weights_keep_fp32_tables() -> None:
    _, ours = make_pair()
    tables = {name: buf.clone() for name, buf in ours.named_buffers()}
    ours = ours.to(torch.bfloat16)
    for name, buf in ours.named_buffers():
        assert buf.dtype == tables[name].dtype, name
        torch.testing.assert_close(buf, tables[name], rtol=0, atol=0)
    assert ours.linear_in.weight.dtype == torch.bfloat16
    inputs, aatype = make_inputs(1, 6)
    inputs = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    with torch.no_grad():
        out = ours(inputs, aatype)
    assert out["positions"].dtype == torch.float32
    assert torch.isfinite(out["positions"]).all()


def test_meta_construction_then_reset_buffers() -> None:
    # The loader builds models on the meta device and calls `reset_buffers()` for
    # buffers that are not in the checkpoint.
    _, reference = make_pair()
    with torch.device("meta"):
        ours = StructureModule(StructureModuleConfig(**SMALL))
    ours.to(torch.bfloat16)
    assert all(b.is_meta for b in ours.buffers())
    ours.to_empty(device="cpu")
    ours.reset_buffers()
    expected = dict(reference.named_buffers())
    for name, buf in ours.named_buffers():
        assert buf.dtype == expected[name].dtype, name
        torch.testing.assert_close(buf, expected[name], rtol=0, atol=0)


def test_gradients_match_reference_including_rotation_stop() -> None:
    # Train mode with dropout off: the gradients also check that rotations are
    # detached between iterations exactly where the reference detaches them.
    config = dict(SMALL, dropout_rate=0.0)
    torch.manual_seed(2)
    ref = EsmFoldStructureModule(RefConfig(**config)).train()
    randomize_(ref, std=0.1)
    ours = StructureModule(StructureModuleConfig(**config)).train()
    ours.load_state_dict(ref.state_dict(), strict=True)
    inputs, aatype = make_inputs(1, 6)
    weights = torch.randn(SMALL["num_blocks"], 1, 6, 14, 3)
    for module in (ref, ours):
        out = module(dict(inputs), aatype)
        (out["positions"] * weights).sum().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-4, msg=name)
