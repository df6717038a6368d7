"""One block of the ESMFold folding trunk (ESMFold paper, Fig. S1; "triangular self-attention").

The sequence state attends over residues with a bias from the pair state; the
pair state is then updated from the sequence (outer product/difference), by the
two triangle multiplicative updates and the two triangle attentions, and a
transition. Unlike the Evoformer there is no MSA and no outer-product mean.
"""

from __future__ import annotations

import torch
from torch import nn

from esmpipe.models.esmfold.attention import SequenceAttention
from esmpipe.models.esmfold.config import TrunkConfig
from esmpipe.models.esmfold.layers import (
    PairToSequence,
    ResidueMLP,
    SequenceToPair,
    SharedDropout,
)
from esmpipe.models.esmfold.triangular import TriangleAttention, TriangleMultiplicativeUpdate


class TriangularSelfAttentionBlock(nn.Module):
    """A trunk block updating (s [B, L, C_s], z [B, L, L, C_z])."""

    def __init__(self, config: TrunkConfig):
        super().__init__()
        c_s = config.sequence_state_dim
        c_z = config.pairwise_state_dim
        self.c_s = c_s
        self.c_z = c_z
        seq_heads = c_s // config.sequence_head_width
        pair_heads = c_z // config.pairwise_head_width

        self.layernorm_1 = nn.LayerNorm(c_s)
        self.sequence_to_pair = SequenceToPair(c_s, c_z // 2, c_z)
        self.pair_to_sequence = PairToSequence(c_z, seq_heads)
        self.seq_attention = SequenceAttention(c_s, seq_heads, config.sequence_head_width)
        self.tri_mul_out = TriangleMultiplicativeUpdate(c_z, outgoing=True)
        self.tri_mul_in = TriangleMultiplicativeUpdate(c_z, outgoing=False)
        self.tri_att_start = TriangleAttention(
            c_z, config.pairwise_head_width, pair_heads, starting=True, inf=1e9
        )
        self.tri_att_end = TriangleAttention(
            c_z, config.pairwise_head_width, pair_heads, starting=False, inf=1e9
        )
        self.mlp_seq = ResidueMLP(c_s, 4 * c_s, dropout=config.dropout)
        self.mlp_pair = ResidueMLP(c_z, 4 * c_z, dropout=config.dropout)

        self.drop = nn.Dropout(config.dropout)
        self.row_drop = SharedDropout(config.dropout * 2, 2)
        self.col_drop = SharedDropout(config.dropout * 2, 1)

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs:
            s: [B, L, C_s] sequence state.
            z: [B, L, L, C_z] pair state.
            mask: [B, L], 1 for residues, 0 for padding.
            chunk_size: rows of the pair processed at once (None: all).
        Output:
            (s [B, L, C_s], z [B, L, L, C_z])
        """
        b, n, c_s = s.shape
        assert c_s == self.c_s, f"sequence state has {c_s} channels, expected {self.c_s}"
        assert z.shape == (b, n, n, self.c_z), (
            f"pair state has shape {tuple(z.shape)}, expected {(b, n, n, self.c_z)}"
        )
        assert mask is None or mask.shape == (b, n), f"mask has shape {tuple(mask.shape)}"

        # Sequence attention biased by the pair, then the sequence transition.
        bias = self.pair_to_sequence(z)
        y = self.seq_attention(self.layernorm_1(s), mask=mask, bias=bias)
        s = s + self.drop(y)
        s = self.mlp_seq(s)

        z = z + self.sequence_to_pair(s, chunk_size=chunk_size)

        # [B, L, L]
        pair_mask = mask.unsqueeze(2) * mask.unsqueeze(1) if mask is not None else None
        z = z + self.row_drop(self.tri_mul_out(z, mask=pair_mask, chunk_size=chunk_size))
        z = z + self.col_drop(self.tri_mul_in(z, mask=pair_mask, chunk_size=chunk_size))
        z = z + self.row_drop(self.tri_att_start(z, mask=pair_mask, chunk_size=chunk_size))
        z = z + self.col_drop(self.tri_att_end(z, mask=pair_mask, chunk_size=chunk_size))
        z = self.mlp_pair(z, chunk_size=chunk_size)
        return s, z
