"""Small layers of the folding trunk: transitions, sequence<->pair projections, dropouts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esmpipe.models.esmfold.chunking import map_row_chunks


class SharedDropout(nn.Module):
    """Dropout whose mask is shared along `shared_dim` (row or column dropout of AlphaFold2).

    Applied to a [B, L, L, C] update, `shared_dim=2` drops whole rows' channels
    identically across columns ("row dropout"), `shared_dim=1` across rows.
    """

    def __init__(self, rate: float, shared_dim: int):
        super().__init__()
        self.shared_dim = shared_dim
        self.dropout = nn.Dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout.p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        return x * self.dropout(x.new_ones(shape))


class SequenceToPair(nn.Module):
    """Outer product and difference of projected residues, projected to the pair width.

    z[b, i, j] = o_proj([q_j * k_i, q_j - k_i]) with q, k = split(proj(LN(s))).
    """

    def __init__(self, sequence_state_dim: int, inner_dim: int, pairwise_state_dim: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(sequence_state_dim)
        self.proj = nn.Linear(sequence_state_dim, inner_dim * 2, bias=True)
        self.o_proj = nn.Linear(2 * inner_dim, pairwise_state_dim, bias=True)

    def forward(self, s: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """[B, L, C_s] -> [B, L, L, C_z]; `chunk_size` bounds the [B, rows, L, 2 * inner] temp."""
        assert s.dim() == 3, f"expected [B, L, C_s], got {tuple(s.shape)}"
        q, k = self.proj(self.layernorm(s)).chunk(2, dim=-1)
        # o_proj is linear, so its difference half splits into per-residue terms:
        # W_d (q_j - k_i) = W_d q_j - W_d k_i, [B, L, C_z] each, instead of an
        # [B, L, L, inner] difference and a concatenated [B, L, L, 2 * inner] input.
        w_prod, w_diff = self.o_proj.weight.split(q.shape[-1], dim=1)
        q_diff = F.linear(q, w_diff, self.o_proj.bias)
        k_diff = F.linear(k, w_diff)

        def rows(k_rows: torch.Tensor, kd_rows: torch.Tensor, q_all: torch.Tensor) -> torch.Tensor:
            # [B, rows, L, C_z]: pair (i, j) combines k_i with q_j.
            z = F.linear(q_all[:, None, :, :] * k_rows[:, :, None, :], w_prod)
            return z + q_diff[:, None, :, :] - kd_rows[:, :, None, :]

        return map_row_chunks(rows, [k, k_diff], chunk_size, 1, q)


class PairToSequence(nn.Module):
    """Per-head attention bias from the pair representation: [B, L, L, C_z] -> [B, L, L, H]."""

    def __init__(self, pairwise_state_dim: int, num_heads: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(pairwise_state_dim)
        self.linear = nn.Linear(pairwise_state_dim, num_heads, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.dim() == 4, f"expected [B, L, L, C_z], got {tuple(z.shape)}"
        return self.linear(self.layernorm(z))


class ResidueMLP(nn.Module):
    """Pre-norm residual transition: x + Linear(ReLU(Linear(LN(x)))), on the last dim."""

    def __init__(self, embed_dim: int, inner_dim: int, dropout: float = 0.0):
        super().__init__()
        # Indices 0..4 are the checkpoint's `mlp.0`, `mlp.1`, `mlp.3` keys.
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, inner_dim),
            nn.ReLU(),
            nn.Linear(inner_dim, embed_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """[*, N, C] -> [*, N, C]; with `chunk_size`, rows of dim 1 go in chunks.

        Chunking matters for the pair transition, whose 4x-wide hidden layer on
        [B, L, L, 4 * C_z] is the largest temporary of a trunk block.
        """
        return map_row_chunks(lambda t: t + self.mlp(t), [x], chunk_size, 1)
