"""The folding trunk against the `transformers` port, module by module, and chunked vs unchunked."""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm.configuration_esm import TrunkConfig as HFTrunkConfig
from transformers.models.esm.modeling_esmfold import (
    EsmFoldingTrunk,
    EsmFoldTriangularSelfAttentionBlock,
)

from esmpipe.models.esmfold.chunking import map_row_chunks
from esmpipe.models.esmfold.config import TrunkConfig
from esmpipe.models.esmfold.tri_self_attn_block import TriangularSelfAttentionBlock
from esmpipe.models.esmfold.trunk import FoldingTrunk, RelativePosition, cbeta_distogram_bins

from . import TINY_TRUNK

ATOL = 1e-4


def _randomise(module: torch.nn.Module, scale: float = 0.2) -> None:
    # The reference zero-initialises many output layers; random weights make every path count.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _inputs(b: int = 2, n: int = 11, c_s: int = 32, c_z: int = 16):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(b, n, c_s, generator=g)
    z = torch.randn(b, n, n, c_z, generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, 7:] = 0
    return s, z, mask


def _assert_real_close(out, ref, mask, batch_dim=0, pair=False, msg=""):
    # Padded rows may differ from the reference's (see TriangleAttention); real ones may not.
    for b, n in enumerate(mask.sum(dim=1).tolist()):
        o = out.select(batch_dim, b)
        r = ref.select(batch_dim, b)
        index = (slice(None),) * batch_dim + (slice(0, n),) + ((slice(0, n),) if pair else ())
        torch.testing.assert_close(o[index], r[index], atol=ATOL, rtol=0, msg=msg)


@pytest.fixture(scope="module")
def block_pair():
    torch.manual_seed(0)
    hf_cfg = {k: v for k, v in TINY_TRUNK.items() if k != "structure_module"}
    theirs = EsmFoldTriangularSelfAttentionBlock(HFTrunkConfig(**hf_cfg)).eval()
    _randomise(theirs)
    ours = TriangularSelfAttentionBlock(TrunkConfig(**hf_cfg)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.fixture(scope="module")
def trunk_pair():
    torch.manual_seed(0)
    theirs = EsmFoldingTrunk(HFTrunkConfig(**TINY_TRUNK)).eval()
    _randomise(theirs, 0.1)
    ours = FoldingTrunk(TrunkConfig.from_dict(TINY_TRUNK)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def test_block_state_dict_keys_match(block_pair):
    theirs, ours = block_pair
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_block_matches_reference(block_pair, chunk_size):
    theirs, ours = block_pair
    s, z, mask = _inputs()
    with torch.no_grad():
        s_ref, z_ref = theirs(s, z, mask=mask)
        s_out, z_out = ours(s, z, mask=mask, chunk_size=chunk_size)
    _assert_real_close(s_out, s_ref, mask)
    _assert_real_close(z_out, z_ref, mask, pair=True)
    # The unpadded protein matches everywhere.
    torch.testing.assert_close(z_out[0], z_ref[0], atol=ATOL, rtol=0)


def test_block_padding_does_not_leak(block_pair):
    _, ours = block_pair
    s, z, mask = _inputs()
    n = 7
    with torch.no_grad():
        s_pad, z_pad = ours(s[1:], z[1:], mask=mask[1:])
        s_alone, z_alone = ours(s[1:, :n], z[1:, :n, :n], mask=mask[1:, :n])
    torch.testing.assert_close(s_pad[:, :n], s_alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(z_pad[:, :n, :n], z_alone, atol=ATOL, rtol=0)


def test_trunk_state_dict_keys_match(trunk_pair):
    theirs, ours = trunk_pair
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.parametrize("num_recycles", [0, 1, None])
def test_trunk_matches_reference(trunk_pair, num_recycles):
    theirs, ours = trunk_pair
    s, z, mask = _inputs()
    b, n = mask.shape
    aa = torch.randint(0, 21, (b, n), generator=torch.Generator().manual_seed(2))
    residx = torch.arange(n).expand(b, n)
    with torch.no_grad():
        ref = theirs(s, z, aa, residx, mask, no_recycles=num_recycles)
        out = ours(s, z, aa, residx, mask, num_recycles=num_recycles)
    for key in ("frames", "positions", "angles", "states"):
        _assert_real_close(out[key], ref[key], mask, batch_dim=1, msg=key)
    _assert_real_close(out["s_s"], ref["s_s"], mask, msg="s_s")
    _assert_real_close(out["s_z"], ref["s_z"], mask, pair=True, msg="s_z")


def test_num_recycles_meaning(trunk_pair):
    _, ours = trunk_pair
    assert ours.num_iterations(0) == 1
    assert ours.num_iterations(3) == 4
    # The reference's quirk: None runs max_recycles passes, not max_recycles + 1.
    assert ours.num_iterations(None) == TINY_TRUNK["max_recycles"]
    with pytest.raises(ValueError, match="num_recycles"):
        ours.num_iterations(-1)


def test_chunked_trunk_matches_unchunked(trunk_pair):
    _, ours = trunk_pair
    s, z, mask = _inputs(n=13)
    b, n = mask.shape
    aa = torch.randint(0, 21, (b, n), generator=torch.Generator().manual_seed(3))
    residx = torch.arange(n).expand(b, n)
    try:
        with torch.no_grad():
            ours.set_chunk_size(None)
            full = ours(s, z, aa, residx, mask, num_recycles=1)
            ours.set_chunk_size(4)
            chunked = ours(s, z, aa, residx, mask, num_recycles=1)
    finally:
        ours.set_chunk_size(None)
    for key in ("positions", "s_s", "s_z"):
        torch.testing.assert_close(chunked[key], full[key], atol=ATOL, rtol=0, msg=key)
    with pytest.raises(ValueError, match="chunk_size"):
        ours.set_chunk_size(0)


def test_recycle_distogram_matches_reference():
    coords = torch.randn(2, 9, 3, 3, generator=torch.Generator().manual_seed(4)) * 8
    ref = EsmFoldingTrunk.distogram(coords, 3.375, 21.375, 15)
    assert torch.equal(cbeta_distogram_bins(coords), ref)


def test_relative_position_reserves_zero_for_padding():
    rel = RelativePosition(position_bins=4, pairwise_state_dim=3)
    with torch.no_grad():
        rel.embedding.weight.copy_(torch.arange(10.0)[:, None].expand(10, 3))
    residx = torch.tensor([[0, 1, 2, 10], [5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = rel(residx, mask)[..., 0].long()
    # (i, j) -> clamp(j - i, -4, 4) + 5
    assert out[0, 0].tolist() == [5, 6, 7, 9]
    assert out[0, 3].tolist() == [1, 1, 1, 5]
    assert out[1, 3].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="long"):
        rel(residx.float(), mask)


def test_map_row_chunks_reassembles():
    x = torch.randn(2, 10, 5)
    shared = torch.randn(5)
    full = map_row_chunks(lambda t, w: t * w, [x], None, 1, shared)
    chunked = map_row_chunks(lambda t, w: t * w, [x], 3, 1, shared)
    assert torch.equal(full, chunked)
    with pytest.raises(ValueError, match="disagree"):
        map_row_chunks(lambda a, b: a + b, [x, torch.randn(2, 4, 5)], 3, 1)


def test_safe_chunk_size_bounds_logits():
    from esmpipe.models.esmfold.triangular import MAX_LOGITS, safe_chunk_size

    small = torch.empty(1, 16, 16, 1)
    assert safe_chunk_size(small, None, 4) is None
    assert safe_chunk_size(small, 8, 4) == 8
    # A length whose unchunked logits would not fit 32-bit indexing, on the meta device.
    big = torch.empty(1, 1100, 1100, 1, device="meta")
    rows = safe_chunk_size(big, None, 4)
    assert rows is not None and rows < 1100 and rows * 4 * 1100 * 1100 <= MAX_LOGITS
    assert safe_chunk_size(big, 64, 4) == 64


def test_chunked_block_attends_in_bounded_row_chunks(block_pair, monkeypatch):
    # Memory check without a GPU: with chunk_size c no triangle attention call
    # sees more than c rows, so its [B, c, H, L, L] logits grow as L^2, not L^3.
    from esmpipe.models.esmfold.attention import Attention

    _, ours = block_pair
    seen: list[int] = []
    original = Attention.forward

    def spy(self, q_x, kv_x, biases=()):
        seen.append(q_x.shape[1])
        # One [B, 1, H, L, L] bias shared by all rows: nothing L^3 is built for it.
        assert all(b.shape[1] == 1 for b in biases)
        return original(self, q_x, kv_x, biases)

    monkeypatch.setattr(Attention, "forward", spy)
    s, z, mask = _inputs(n=13)
    with torch.no_grad():
        ours(s, z, mask=mask, chunk_size=4)
    assert seen and max(seen) <= 4
    seen.clear()
    with torch.no_grad():
        ours(s, z, mask=mask)
    assert seen and max(seen) == 13
