"""Attention layers of the folding trunk.

- `Attention`: gated multi-head attention with additive biases, the core of
  triangle attention (AlphaFold2 supplement, Algorithms 13 and 14).
- `SequenceAttention`: ESMFold's gated self-attention over residues with a bias
  projected from the pair representation (`seq_attention` in the checkpoint).

Both use `scaled_dot_product_attention`, which on a GPU picks a fused kernel
that takes the additive bias; the math is the reference's
`softmax(q k^T / sqrt(c) + bias) v`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with a sigmoid gate and a list of additive biases.

    Args:
        c_q: channels of the query input.
        c_kv: channels of the key/value input.
        c_hidden: channels per head.
        num_heads: number of heads.
        gating: multiply the attended values by `sigmoid(linear_g(q_x))`.
    """

    def __init__(self, c_q: int, c_kv: int, c_hidden: int, num_heads: int, gating: bool = True):
        super().__init__()
        self.c_hidden = c_hidden
        self.num_heads = num_heads
        inner = c_hidden * num_heads
        self.linear_q = nn.Linear(c_q, inner, bias=False)
        self.linear_k = nn.Linear(c_kv, inner, bias=False)
        self.linear_v = nn.Linear(c_kv, inner, bias=False)
        self.linear_o = nn.Linear(inner, c_q)
        self.linear_g = nn.Linear(c_q, inner) if gating else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [*, N, H * C] -> [*, H, N, C]
        return x.unflatten(-1, (self.num_heads, self.c_hidden)).transpose(-2, -3)

    def _fused_projection(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q, k, v [*, H, N, C] (strided views) and the gate logits [*, N, H, C] (or None)."""
        layers = [self.linear_q, self.linear_k, self.linear_v]
        if self.linear_g is not None:
            layers.append(self.linear_g)
        weight = torch.cat([layer.weight for layer in layers])
        bias = None
        if self.linear_g is not None:
            inner = self.num_heads * self.c_hidden
            bias = torch.cat([self.linear_g.bias.new_zeros(3 * inner), self.linear_g.bias])
        # [*, N, 3 or 4, H, C]
        p = F.linear(x, weight, bias).unflatten(-1, (len(layers), self.num_heads, self.c_hidden))
        q, k, v = (p.select(-3, i).transpose(-2, -3) for i in range(3))
        return q, k, v, p.select(-3, 3) if self.linear_g is not None else None

    def forward(
        self, q_x: torch.Tensor, kv_x: torch.Tensor, biases: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """Attend from `q_x` [*, Q, C_q] to `kv_x` [*, K, C_kv].

        `biases` broadcast to [*, H, Q, K] and are summed into the logits.
        Returns [*, Q, C_q].
        """
        gate = None
        if q_x is kv_x:
            # Self-attention (triangle attention): q, k, v and the gate in one matmul.
            q, k, v, gate = self._fused_projection(q_x)
        else:
            q = self._heads(self.linear_q(q_x))
            k = self._heads(self.linear_k(kv_x))
            v = self._heads(self.linear_v(kv_x))
        bias = None
        for b in biases:
            bias = b if bias is None else bias + b
        batch = q.shape[:-3]
        if bias is not None:
            # [N, H, Q, K]: the fused kernels take 4-D inputs with the batch spelled out.
            bias = bias.to(q.dtype).expand(*q.shape[:-1], k.shape[-2])
            bias = bias.reshape(-1, *bias.shape[-3:])
        # [N, H, Q, C]: flattening the batch dims lets PyTorch pick a fused kernel
        # (several times faster than the 5-D fallback on CPU, and memory-efficient on GPU).
        o = F.scaled_dot_product_attention(
            q.reshape(-1, *q.shape[-3:]),
            k.reshape(-1, *k.shape[-3:]),
            v.reshape(-1, *v.shape[-3:]),
            attn_mask=bias,
        )
        # [*, H, Q, C]
        o = o.view(*batch, *o.shape[-3:])
        # [*, Q, H, C]
        o = o.transpose(-2, -3)
        if self.linear_g is not None:
            if gate is None:
                gate = self.linear_g(q_x).unflatten(-1, (self.num_heads, self.c_hidden))
            o = o * torch.sigmoid(gate)
        # [*, Q, H * C]
        return self.linear_o(o.flatten(-2))


class SequenceAttention(nn.Module):
    """Gated self-attention over residues with an external pair bias.

    The fused `proj` holds, per head, the query, key and value channels side by
    side ([C] -> [H, 3 * head_width]), which is the checkpoint's layout.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_width: int, gated: bool = True):
        super().__init__()
        if embed_dim != num_heads * head_width:
            raise ValueError(
                f"embed_dim ({embed_dim}) must equal num_heads ({num_heads}) * "
                f"head_width ({head_width})"
            )
        self.num_heads = num_heads
        self.head_width = head_width
        self.proj = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.g_proj = nn.Linear(embed_dim, embed_dim) if gated else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention over the residues of `x`.

        Inputs:
            x: [B, L, C] sequence state.
            mask: [B, L], 1 for residues, 0 for padding (padding keys are ignored).
            bias: [B, L, L, H] pair bias added to the logits.
        Output:
            [B, L, C]
        """
        b, n, _ = x.shape
        # [B, H, L, 3 * W]
        t = self.proj(x).view(b, n, self.num_heads, 3 * self.head_width).permute(0, 2, 1, 3)
        q, k, v = t.chunk(3, dim=-1)
        logit_bias = None
        if bias is not None:
            # [B, H, L, L]
            logit_bias = bias.permute(0, 3, 1, 2).to(q.dtype)
        if mask is not None:
            # [B, 1, 1, L]: padding keys get -inf, as the reference's masked_fill.
            key_pad = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            key_pad = key_pad.masked_fill(mask == 0, float("-inf"))[:, None, None, :]
            logit_bias = key_pad if logit_bias is None else logit_bias + key_pad
        if logit_bias is not None:
            logit_bias = logit_bias.expand(b, self.num_heads, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=logit_bias)
        # [B, L, H * W]
        y = y.transpose(1, 2).reshape(b, n, -1)
        if self.g_proj is not None:
            y = torch.sigmoid(self.g_proj(x)) * y
        return self.o_proj(y)
