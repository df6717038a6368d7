"""Multi-head self-attention of the ESM transformer layers (pre-LayerNorm).

ESM scales the queries by 1/sqrt(d) *before* the rotary rotation (the original
fairseq code does so, and the reference reproduces it), so the attention itself
runs with scale 1. Without attention maps the product goes through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels); with them an
explicit softmax is used, because SDPA does not return the probabilities.

The packed path (`forward_packed`, inference only) takes the tokens of several
sequences concatenated without padding, `[T, C]` with sequence boundaries
`cu_seqlens`: the query, key and value projections straight from the
checkpoint's tensors, the query scale folded into the rotary tables, and
attention within each sequence only, so no work is spent on padding. See
`packed_attention`.
NOTE: the three projections are not fused into one [3C, C] weight: a fused copy
is a second copy of a quarter of each layer's weights (147 MB for esm2_t30_150M;
the checkpoint's own tensors stay mapped), and one fused GEMM was no faster than
three on the issue's CPU (1 thread, 3,700 tokens: 57.0 vs 55.3 ms at C = 480).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from esmpipe.models.config import EsmConfig
from esmpipe.models.kernels import linear
from esmpipe.models.rotary import apply_rotary, apply_rotary_packed


def _varlen_attn():
    """torch's variable-length flash attention (CUDA, half precision), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch
        return None
    return varlen_attn


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    bounds: list[tuple[int, int]],
    max_len: int,
) -> torch.Tensor:
    """Attention of each sequence to itself: q, k, v [T, H, D] -> context [T, H, D].

    cu_seqlens: int32 [B+1] token offsets (on the tensors' device); bounds: the same
    as Python (start, end) pairs. On CUDA in half precision one variable-length
    flash-attention call covers the batch; elsewhere one SDPA call per sequence
    (on the CPU the per-call cost is small next to the projections).
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        varlen = _varlen_attn()
        if varlen is not None:
            try:
                q, k, v = (t.contiguous() for t in (q, k, v))
                return varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=1.0)
            except (RuntimeError, NotImplementedError):  # e.g. a head size flash lacks
                pass
    out = torch.empty_like(q)
    for start, end in bounds:
        # [l, H, D] -> [1, H, l, D]
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, scale=1.0)[0].transpose(0, 1)
    return out


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

    def forward_packed(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        bounds: list[tuple[int, int]],
        max_len: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [T, C] packed tokens; rotary: cos, sin [T, D] -> context [T, C] (inference)."""
        tokens = x.shape[0]
        scale = self.head_dim**-0.5
        # [T, C] -> [T, H, D]
        q, k, v = (linear(x, p.weight, p.bias).view(tokens, self.num_heads, self.head_dim)
                   for p in (self.query, self.key, self.value))  # fmt: skip
        if self.rotary:
            q = apply_rotary_packed(q, *rotary, scale=scale)
            k = apply_rotary_packed(k, *rotary)
        else:
            q = q.mul_(scale)
        context = packed_attention(q, k, v, cu_seqlens, bounds, max_len)
        return context.reshape(tokens, self.num_heads * self.head_dim)

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

    def forward_packed(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        bounds: list[tuple[int, int]],
        max_len: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [T, C] packed tokens -> [T, C] (see `EsmSelfAttention.forward_packed`)."""
        context = self.self.forward_packed(self.LayerNorm(x), cu_seqlens, bounds, max_len, rotary)
        out = linear(context, self.output.dense.weight, self.output.dense.bias)
        return out.add_(x)
