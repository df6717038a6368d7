"""Triangle updates of the pair representation (AlphaFold2 supplement, Algorithms 11-14).

- `TriangleMultiplicativeUpdate`: "outgoing" (Alg. 11) combines edges i->k and
  j->k, "incoming" (Alg. 12) edges k->i and k->j.
- `TriangleAttention`: row attention around the starting node (Alg. 13), or,
  on the transposed pair, around the ending node (Alg. 14).

Both take `chunk_size` to process rows of the pair in chunks (same result,
bounded memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esmpipe.models.esmfold.attention import Attention
from esmpipe.models.esmfold.chunking import map_row_chunks

# Largest number of attention logits one kernel call may hold: 32-bit indexing.
MAX_LOGITS = 2**31 - 1


def safe_chunk_size(z: torch.Tensor, chunk_size: int | None, num_heads: int) -> int | None:
    """`chunk_size`, or fewer rows where the [B, rows, H, L, L] logits would pass 2^31 elements.

    NOTE: the reference runs unchunked triangle attention whatever the length;
    with esmfold_v1's 4 pair heads the logits pass 2^31 elements beyond about
    810 residues, where attention kernels with 32-bit indexing may silently
    return garbage. Rows are then chunked here even when no chunk size was
    asked for (the result is the same, up to rounding).
    """
    b, n = z.shape[0], z.shape[1]
    per_row = max(1, b * num_heads * n * n)
    limit = max(1, MAX_LOGITS // per_row)
    if chunk_size is None:
        return limit if limit < n else None
    return min(chunk_size, limit)


class TriangleMultiplicativeUpdate(nn.Module):
    """Triangle multiplicative update on a [B, L, L, C_z] pair; outgoing or incoming edges.

    The four edge projections (`linear_a_p`, `linear_a_g`, `linear_b_p`,
    `linear_b_g`, the checkpoint's keys) run as one matmul that writes them
    channel-first, [4 * C, L * L], which is the layout the per-channel
    contraction over k needs: no permute copies before the L^3 product, whose
    operands are then plain or transposed matrices that BLAS takes as they are.
    Proteins of a batch go one at a time (the same work, a quarter of the
    temporaries). In float16/bfloat16 the product and the output LayerNorm run
    in float32 (as openfold does): sums over L terms would lose range and
    digits otherwise.
    """

    def __init__(self, c_z: int, outgoing: bool = True):
        super().__init__()
        self.outgoing = outgoing
        self.linear_a_p = nn.Linear(c_z, c_z)
        self.linear_a_g = nn.Linear(c_z, c_z)
        self.linear_b_p = nn.Linear(c_z, c_z)
        self.linear_b_g = nn.Linear(c_z, c_z)
        self.linear_g = nn.Linear(c_z, c_z)
        self.linear_z = nn.Linear(c_z, c_z)
        self.layer_norm_in = nn.LayerNorm(c_z)
        self.layer_norm_out = nn.LayerNorm(c_z)

    def _edges(
        self, z: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated, masked edges of one protein: z [L, L, C] (normed) -> a, b [C, L, L]."""
        n, _, c = z.shape
        layers = (self.linear_a_p, self.linear_a_g, self.linear_b_p, self.linear_b_g)
        weight = torch.cat([layer.weight for layer in layers])  # [4C, C]
        bias = torch.cat([layer.bias for layer in layers])
        # [4C, L * L] = W @ z^T: channel-first straight out of the matmul.
        p = torch.addmm(bias[:, None], weight, z.reshape(n * n, c).t())
        a_p, a_g, b_p, b_g = p.view(4, c, n, n).unbind(0)
        m = None if mask is None else mask.to(z.dtype)  # [L, L]
        if torch.is_grad_enabled():
            a, b = a_p * a_g.sigmoid(), b_p * b_g.sigmoid()
            return (a, b) if m is None else (a * m, b * m)
        # Inference: in place, in the projection's own buffer.
        a = a_p.mul_(a_g.sigmoid_())
        b = b_p.mul_(b_g.sigmoid_())
        if m is not None:
            a.mul_(m)
            b.mul_(m)
        return a, b

    def forward(
        self, z: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Update for the pair `z` [B, L, L, C_z], pair `mask` [B, L, L]; returns [B, L, L, C_z].

        Masked pairs contribute nothing to the sums over the third node k.
        `chunk_size` bounds the [rows, L, C_z] output temporaries.
        """
        z = self.layer_norm_in(z)
        b_size, n = z.shape[0], z.shape[1]
        out = torch.empty_like(z)
        reduced = z.dtype in (torch.float16, torch.bfloat16)
        step = n if chunk_size is None else max(1, min(chunk_size, n))
        for i in range(b_size):
            a, b = self._edges(z[i], None if mask is None else mask[i])
            if reduced:
                a, b = a.float(), b.float()
            if self.outgoing:
                # x[c, i, j] = sum_k a[c, i, k] * b[c, j, k]
                a_rows, b_mat = a, b.transpose(1, 2)
            else:
                # x[c, i, j] = sum_k a[c, k, i] * b[c, k, j]
                a_rows, b_mat = a.transpose(1, 2), b
            for start in range(0, n, step):
                rows = slice(start, min(start + step, n))
                # [C, rows, L] -> [rows, L, C]
                x = torch.bmm(a_rows[:, rows], b_mat).permute(1, 2, 0)
                x = F.layer_norm(
                    x, x.shape[-1:], self.layer_norm_out.weight.to(x.dtype),
                    self.layer_norm_out.bias.to(x.dtype), self.layer_norm_out.eps,
                )  # fmt: skip
                x = self.linear_z(x.to(z.dtype))
                out[i, rows] = x.mul_(torch.sigmoid(self.linear_g(z[i, rows])))
        return out


class TriangleAttention(nn.Module):
    """Gated attention along pair rows with a triangle bias; `starting=False` works on columns.

    Args:
        c_in: pair channels C_z.
        c_hidden: channels per head.
        num_heads: number of heads.
        starting: around the starting node (rows); False for the ending node (columns).
        inf: magnitude of the additive mask for padded keys.
    """

    def __init__(
        self, c_in: int, c_hidden: int, num_heads: int, starting: bool = True, inf: float = 1e9
    ):
        super().__init__()
        self.starting = starting
        self.inf = inf
        self.layer_norm = nn.LayerNorm(c_in)
        self.linear = nn.Linear(c_in, num_heads, bias=False)
        self.heads = num_heads
        self.mha = Attention(c_in, c_in, c_hidden, num_heads)

    def forward(
        self, z: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Update for the pair `z` [B, L, L, C_z]; returns [B, L, L, C_z].

        `mask` [B, L, L] is the pair mask, the outer product of a residue mask
        (as the trunk builds it).

        NOTE: the reference masks key j of row i where pair (i, j) is padding,
        which gives every row its own bias: a [B, L, H, L, L] tensor (L^3) built
        next to the logits. Here padded keys are masked in every row, so one
        [B, 1, H, L, L] bias serves all rows as a broadcast view and no L^3
        tensor is built outside the attention kernel. Rows of real residues get
        exactly the reference's result; rows of padding differ, and those never
        reach a real residue (every later use of them is masked).
        """
        if not self.starting:
            z = z.transpose(1, 2)
            mask = mask.transpose(1, 2) if mask is not None else None
        z = self.layer_norm(z)
        # [B, 1, H, I, J]: the triangle bias, shared by every row.
        bias = self.linear(z).permute(0, 3, 1, 2).unsqueeze(1)
        if mask is not None:
            # [B, J]: the keys' residue mask, read off the pair mask of any real row.
            keys = mask.to(z.dtype).amax(dim=1)
            # Clamped to the dtype's range (1e9 is inf in fp16, and inf * 0 is NaN).
            inf = min(self.inf, torch.finfo(z.dtype).max)
            bias = bias + (inf * (keys - 1))[:, None, None, None, :]
        # Contiguous keys-last: attention kernels copy a strided mask to full size,
        # which for this broadcast bias would be the L^3 tensor avoided above.
        bias = bias.contiguous()
        chunk = safe_chunk_size(z, chunk_size, self.heads)

        def rows(z_rows: torch.Tensor, shared_bias: torch.Tensor) -> torch.Tensor:
            return self.mha(z_rows, z_rows, (shared_bias,))

        if z.shape[0] == 1:
            out = map_row_chunks(rows, [z], chunk, 1, bias)
        else:
            # One protein at a time: flattening [B, rows] would copy the broadcast
            # bias to [B * rows, H, L, L].
            out = torch.empty_like(z)
            for b in range(z.shape[0]):
                out[b : b + 1] = map_row_chunks(rows, [z[b : b + 1]], chunk, 1, bias[b : b + 1])
        if not self.starting:
            out = out.transpose(1, 2)
        return out
