"""Token embeddings of ESM: word lookup, token-dropout rescaling, absolute positions.

Token dropout (ESM-2, and ESM-1b/1v checkpoints that set it): masked tokens were
zeroed during training, so their embedding is zeroed here too and the rest is
rescaled by (1 - 0.15 * 0.8) / (1 - observed mask ratio) per sequence. As in the
reference this happens in eval mode as well; it is not a training-time dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from esmpipe.models.config import EsmConfig

# Fraction of tokens replaced by <mask> in every ESM training run (15% chosen, 80% masked).
MASK_RATIO_TRAIN = 0.15 * 0.8


def position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Positions padding_idx+1, padding_idx+2, ... for real tokens; padding_idx for padding.

    input_ids: [B, L] -> [B, L] (the fairseq convention absolute ESM models were trained with).
    """
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def _embedding(num: int, dim: int, padding_idx: int | None) -> nn.Embedding:
    """An nn.Embedding whose weight is left for the model's `post_init` to draw (or for
    loading to assign): nn.Embedding's own draw would run twice, and on the meta device
    (`from_pretrained`) a normal_ draw imports torch._dynamo, about 1 s of startup."""
    return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=torch.empty(num, dim))


class EsmEmbeddings(nn.Module):
    """input ids -> [B, L, C] embeddings (before the first transformer layer)."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.word_embeddings = _embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.emb_layer_norm_before
            else None
        )
        self.padding_idx = config.pad_token_id
        self.position_embedding_type = config.position_embedding_type
        if self.position_embedding_type == "absolute":
            self.position_embeddings = _embedding(
                config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
            )
        self.token_dropout = config.token_dropout
        self.mask_token_id = config.mask_token_id
        self.max_positions = config.max_position_embeddings
        # Not in checkpoints (non-persistent), as in the reference.
        self.register_buffer(
            "position_ids", torch.arange(self.max_positions).expand((1, -1)), persistent=False
        )

    def reset_buffers(self) -> None:
        with torch.no_grad():
            self.position_ids.copy_(torch.arange(self.max_positions).expand((1, -1)))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, L] or inputs_embeds [B, L, C]; attention_mask [B, L] -> [B, L, C]."""
        if position_ids is None and self.position_embedding_type == "absolute":
            if input_ids is not None:
                position_ids = position_ids_from_input_ids(input_ids, self.padding_idx)
            else:
                # Padding cannot be seen in embeddings: plain sequential positions.
                batch, length = inputs_embeds.shape[:2]
                position_ids = torch.arange(
                    self.padding_idx + 1, length + self.padding_idx + 1, device=inputs_embeds.device
                ).expand(batch, length)
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds

        if self.token_dropout and input_ids is not None:
            is_mask = input_ids == self.mask_token_id
            embeddings = embeddings.masked_fill(is_mask.unsqueeze(-1), 0.0)
            lengths = attention_mask.sum(-1) if attention_mask is not None else input_ids.shape[1]
            mask_ratio_observed = is_mask.sum(-1).float() / lengths
            scale = (1 - MASK_RATIO_TRAIN) / (1 - mask_ratio_observed)
            embeddings = (embeddings * scale[:, None, None]).to(embeddings.dtype)

        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(position_ids)
        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        if attention_mask is not None:
            embeddings = (embeddings * attention_mask.unsqueeze(-1)).to(embeddings.dtype)
        # NOTE: the reference defines an embedding dropout but never applies it; neither do we.
        return embeddings

    def forward_packed(
        self, input_ids: torch.Tensor, seq_index: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Packed tokens without padding: input_ids, seq_index (the sequence each token
        belongs to), positions (0-based within its sequence), all [T] -> [T, C].

        The same values as `forward` gives each sequence's real tokens: token dropout
        counts the masks per sequence, absolute positions start at padding_idx + 1.
        """
        embeddings = self.word_embeddings(input_ids)
        if self.token_dropout:
            is_mask = input_ids == self.mask_token_id
            embeddings = embeddings.masked_fill(is_mask.unsqueeze(-1), 0.0)
            n_seqs = int(seq_index[-1]) + 1 if seq_index.numel() else 0
            # [B]: tokens and masks per sequence
            lengths = torch.bincount(seq_index, minlength=n_seqs).float()
            masks = torch.bincount(seq_index, weights=is_mask.float(), minlength=n_seqs)
            scale = (1 - MASK_RATIO_TRAIN) / (1 - masks / lengths)
            embeddings = (embeddings * scale[seq_index, None]).to(embeddings.dtype)
        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(positions + self.padding_idx + 1)
        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        return embeddings
