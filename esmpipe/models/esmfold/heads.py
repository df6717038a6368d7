"""Output heads of ESMFold: distogram, pTM (aligned error), pLDDT (lddt) and language-model logits.

The heads are plain `nn.Linear`/`nn.Sequential` modules registered on the model
under the checkpoint's names (`distogram_head`, `ptm_head`, `lddt_head`,
`lm_head`); this module holds their sizes and the two with structure of their own.
"""

from __future__ import annotations

import torch
from torch import nn

DISTOGRAM_BINS = 64  # distogram and pTM/PAE bins
LDDT_BINS = 50  # pLDDT bins over [0, 1]
NUM_ATOM37 = 37


class LddtHead(nn.Sequential):
    """Per-atom pLDDT logits from the structure module's states: [*, C] -> [*, 37, bins].

    NOTE: the published head has no nonlinearity between its linear layers;
    kept so that the checkpoint gives the reference's values.
    """

    def __init__(self, c_in: int, c_hidden: int, num_bins: int = LDDT_BINS):
        self.num_bins = num_bins
        super().__init__(
            nn.LayerNorm(c_in),
            nn.Linear(c_in, c_hidden),
            nn.Linear(c_hidden, c_hidden),
            nn.Linear(c_hidden, NUM_ATOM37 * num_bins),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """[*, L, C] -> [*, L, 37, bins]."""
        return super().forward(states).unflatten(-1, (NUM_ATOM37, self.num_bins))


def symmetric_distogram(head: nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """Distogram logits [B, L, L, bins] from the pair state [B, L, L, C_z], symmetric in (i, j)."""
    logits = head(z)
    return (logits + logits.transpose(1, 2)) / 2
