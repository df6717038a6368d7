"""Contact prediction from attention maps (Rao et al. 2021, "Transformer protein
language models are unsupervised structure learners").

Every layer's and head's attention map becomes one feature channel; the maps are
symmetrised, average-product corrected (APC) and fed to a logistic regression.
"""

from __future__ import annotations

import torch
from torch import nn


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dimensions."""
    return x + x.transpose(-1, -2)


def average_product_correct(x: torch.Tensor) -> torch.Tensor:
    """APC: subtract row_sum * col_sum / total from every map; x: [B, C, L, L]."""
    row = x.sum(-1, keepdim=True)
    col = x.sum(-2, keepdim=True)
    total = x.sum((-1, -2), keepdim=True)
    return x - row * col / total


class EsmContactPredictionHead(nn.Module):
    """attentions [B, layers, heads, L, L] -> contact probabilities [B, L-2, L-2]."""

    def __init__(self, in_features: int, bias: bool = True, eos_idx: int = 2) -> None:
        super().__init__()
        self.in_features = in_features
        self.eos_idx = eos_idx
        self.regression = nn.Linear(in_features, 1, bias)
        self.activation = nn.Sigmoid()

    def forward(self, tokens: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        """tokens: [B, L]; attentions: [B, N_layers, H, L, L] -> [B, L-2, L-2].

        Rows and columns of <eos> tokens are zeroed, and the first (<cls>) and last
        positions are cut, so a padded batch keeps its padding in the output.
        """
        not_eos = tokens.ne(self.eos_idx).to(attentions)
        # [B, L, L]
        pair_mask = not_eos.unsqueeze(1) * not_eos.unsqueeze(2)
        attentions = attentions * pair_mask[:, None, None, :, :]
        attentions = attentions[..., 1:-1, 1:-1]
        batch, layers, heads, length, _ = attentions.shape
        # [B, layers * heads, L-2, L-2]
        features = attentions.reshape(batch, layers * heads, length, length)
        # Attention maps are fp32 by design; the regression may be half precision.
        features = features.to(self.regression.weight)
        features = average_product_correct(symmetrize(features))
        # [B, L-2, L-2, layers * heads]
        features = features.permute(0, 2, 3, 1)
        return self.activation(self.regression(features).squeeze(3))
