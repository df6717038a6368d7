"""Rotary position embeddings (RoFormer), as ESM-2 uses them.

One module per model holds the inverse frequencies (`rotary_embeddings.inv_freq`,
a persistent buffer as in the reference's state dict) and turns position ids
into cos/sin tables that every layer applies to its queries and keys.
"""

from __future__ import annotations

import torch
from torch import nn

from esmpipe.models.config import EsmConfig


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """`1 / theta^(2i / d)` for i in [0, d/2): the RoPE frequencies, shape [d/2]."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] along the last dimension (halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys.

    q, k: [B, H, L, D]; cos, sin: [B, L, D]. The product is taken in fp32 and cast
    back, as the reference does, so half-precision models rotate accurately.
    """
    cos = cos.unsqueeze(1).float()
    sin = sin.unsqueeze(1).float()
    q32, k32 = q.float(), k.float()
    q_out = q32 * cos + rotate_half(q32) * sin
    k_out = k32 * cos + rotate_half(k32) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


def apply_rotary_packed(
    qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, scale: float = 1.0
) -> torch.Tensor:
    """Rotate packed queries or keys: qk [T, ..., D] (e.g. [T, H, D]); cos, sin [T, D].

    The arithmetic of `apply_rotary` (fp32, cast back), written per half without
    building `rotate_half(x)`: out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin.
    `scale` multiplies the result (folded into the [T, D/2] tables: the queries'
    1/sqrt(d) at no cost; the reference scales before rotating, the same up to
    fp32 rounding).
    NOTE: this uses only the first half of cos and sin, which equals the second half
    in the tables `EsmRotaryEmbedding` makes (the frequencies concatenated twice).
    """
    half = qk.shape[-1] // 2
    # [T, 1, .., 1, D/2]
    shape = (qk.shape[0], *(1,) * (qk.dim() - 2), half)
    c = cos[:, :half].float()
    s = sin[:, :half].float()
    if scale != 1.0:
        c, s = c * scale, s * scale
    c, s = c.reshape(shape), s.reshape(shape)
    x = qk.float()
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out1, out2 = out[..., :half], out[..., half:]
    torch.mul(x1, c, out=out1).addcmul_(x2, s, value=-1)
    torch.mul(x2, c, out=out2).addcmul_(x1, s)
    return out.to(qk.dtype)


class EsmRotaryEmbedding(nn.Module):
    """cos/sin tables for given position ids."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.register_buffer("inv_freq", default_inv_freq(self.head_dim, self.theta))

    def reset_buffers(self) -> None:
        with torch.no_grad():
            self.inv_freq.copy_(default_inv_freq(self.head_dim, self.theta))

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, L, C] (for dtype, device); position_ids: [B or 1, L] -> cos, sin [B, L, D]."""
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float)
        # [B, L, D/2]
        freqs = position_ids[..., None].float() * inv_freq
        # [B, L, D]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
