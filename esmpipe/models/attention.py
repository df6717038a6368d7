"""Multi-head self-attention of the ESM transformer layers (pre-LayerNorm).

ESM scales the queries by 1/sqrt(d) *before* the rotary rotation (the original
fairseq code does so, and the reference reproduces it), so the attention itself
runs with scale 1. Without attention maps the product goes through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels); with them an
explicit softmax is used, because SDPA does not return the probabilities.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from esmpipe.models.config import EsmConfig
from esmpipe.models.rotary import apply_rotary


class EsmSelfAttention(nn.Module):
    """query/key/value projections and the attention product."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob
        self.rotary = config.position_embedding_type == "rotary"

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, C]; mask: bool [B, 1, 1, L], True = attend; rotary: cos, sin [B, L, D].

        Returns the context [B, L, C] and, if asked, the probabilities [B, H, L, L].
        """
        batch, length, _ = x.shape
        # [B, L, C] -> [B, H, L, D]
        q = self.query(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.key(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.value(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        q = q * self.head_dim**-0.5
        if self.rotary:
            q, k = apply_rotary(q, k, *rotary)
        dropout = self.dropout if self.training else 0.0

        if output_attentions:
            # [B, H, L, L]
            scores = torch.matmul(q, k.transpose(-1, -2))
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            context = torch.matmul(F.dropout(probs, p=dropout, training=self.training), v)
        else:
            probs = None
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0
            )
        # [B, H, L, D] -> [B, L, C]
        context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return context, probs


class EsmSelfOutput(nn.Module):
    """Output projection of the attention, with the residual connection."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x)) + residual


class EsmAttention(nn.Module):
    """LayerNorm -> self-attention -> projection + residual (pre-norm block)."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.self = EsmSelfAttention(config)
        self.output = EsmSelfOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, C] -> [B, L, C] and optionally probabilities [B, H, L, L]."""
        context, probs = self.self(self.LayerNorm(x), mask, rotary, output_attentions)
        return self.output(context, x), probs
