"""Heads on top of the ESM encoder: pooler, masked-LM head, sequence-classification head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from esmpipe.models.config import EsmConfig


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact erf GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))` as the original ESM code writes it.

    NOTE: computed by the fused `F.gelu` kernel (the same function, one pass over
    the tensor instead of five; equal to the written-out form within float rounding).
    """
    return F.gelu(x)


class EsmPooler(nn.Module):
    """tanh(dense(h[:, 0])): the <cls> token's hidden state, [B, L, C] -> [B, C]."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class EsmLMHead(nn.Module):
    """dense -> gelu -> LayerNorm -> decoder (tied to the word embeddings) + bias.

    [B, L, C] -> logits [B, L, vocab_size].
    """

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(gelu(self.dense(features)))
        return self.decoder(x) + self.bias


class EsmClassificationHead(nn.Module):
    """Sequence classification from the <cls> token: [B, L, C] -> [B, num_labels].

    NOTE: as in the reference, the dropout rate is `hidden_dropout_prob`;
    `classifier_dropout` is carried in the config but not used.
    """

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features[:, 0, :])
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))
