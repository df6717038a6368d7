"""Batched ESM-2 embedding: mean-pooled per-sequence vectors of one layer.

For each sequence: tokens `<cls> residues <eos>` (padded to the batch), one
forward pass in `torch.inference_mode`, the hidden state of the chosen layer
(-1: the last, after the final LayerNorm, i.e. `last_hidden_state`; k >= 0:
`hidden_states[k]`, where 0 is the embedding output), then the mean over the
residue positions only (BOS, EOS and padding excluded), in float32.

Length limit (`max_length`, residues): sequences longer get status "too_long"
and no forward. The default follows what the model can or was trained to see:
- absolute positions: the position table holds `max_position_embeddings`
  rows and real tokens start at `pad_token_id + 1` (the padding-aware
  numbering), so at most `max_position_embeddings - pad_token_id - 1` tokens,
  two of them specials (1022 residues for ESM-1b's 1026 rows). NOTE: the brief
  said `max_position_embeddings - 2`, which overruns the table by the padding
  offset; this is the largest length that does not.
- rotary (ESM-2): no hard limit; 1022 residues, the training crop (1024
  tokens with BOS/EOS), beyond which quality is untested.

CUDA out-of-memory on a batch splits it in halves down to single sequences; a
single sequence that still does not fit gets status "out_of_memory".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from esmpipe.engine.batching import embed_cost, make_batches
from esmpipe.engine.device import free_device_memory, is_oom
from esmpipe.engine.runner import Progress, run_batches
from esmpipe.status import OK, OUT_OF_MEMORY, TOO_LONG

if TYPE_CHECKING:
    from esmpipe.models import EsmConfig, EsmTokenizer

log = logging.getLogger(__name__)

# Bump when a change alters the values this engine writes: cached results carry it,
# and a cache part of another version is computed again.
OUTPUT_VERSION = 1

ROTARY_DEFAULT_MAX_LENGTH = 1022


def default_max_length(config: EsmConfig) -> int:
    """Residues the model takes by default (see the module docstring)."""
    if config.position_embedding_type == "rotary":
        return ROTARY_DEFAULT_MAX_LENGTH
    pad = config.pad_token_id if config.pad_token_id is not None else 1
    return config.max_position_embeddings - pad - 1 - 2


@dataclass
class EmbedResult:
    status: str
    embedding: np.ndarray | None  # [C] float32 when status == "ok"


class Embedder:
    """Mean-pooled embeddings from an `EsmModel` and its `EsmTokenizer`.

    The model is used as given (device, dtype, eval mode are the caller's; see
    `esmpipe.engine.device`). `max_tokens` is the padded token budget per batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: EsmTokenizer,
        *,
        layer: int = -1,
        max_tokens: int = 16384,
        max_length: int | None = None,
    ) -> None:
        config = model.config
        n_layers = config.num_hidden_layers
        if not -1 <= layer <= n_layers:
            raise ValueError(f"--layer {layer}: the model has layers 0..{n_layers} (or -1)")
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.max_tokens = max_tokens
        limit = default_max_length(config)
        absolute = config.position_embedding_type != "rotary"
        if max_length is not None and max_length > limit and absolute:
            raise ValueError(
                f"--max-length {max_length}: this model's absolute positions allow at most {limit}"
            )
        self.max_length = max_length if max_length is not None else limit
        self.hidden_size = config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _forward(self, sequences: list[str]) -> list[np.ndarray]:
        """Mean-pooled [C] float32 vectors for one batch."""
        # NOTE: letters are spaced out so that every residue is exactly one token: the
        # reference tokenizer reads a run of letters missing from the vocabulary ("JJ")
        # as ONE <unk>, which would shorten the sequence; spaced, each is its own <unk>.
        spaced = [" ".join(seq) for seq in sequences]
        encoded = self.tokenizer(spaced, padding=True, return_tensors="pt").to(self.device)
        input_ids = encoded["input_ids"]
        attention_mask = encoded["attention_mask"]
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self.layer != -1,
        )
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        # [B, L] residue positions: real tokens minus BOS (position 0) and EOS (the last real one).
        residues = attention_mask.clone()
        residues[:, 0] = 0
        lengths = attention_mask.sum(dim=1)
        residues[torch.arange(len(sequences), device=residues.device), lengths - 1] = 0
        weights = residues.to(torch.float32).unsqueeze(-1)  # [B, L, 1]
        # [B, C]: the sum in float32, so bf16/fp16 models do not lose precision in the mean.
        pooled = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return list(pooled.cpu().numpy())

    def embed(self, sequences: Sequence[str]) -> list[EmbedResult]:
        """One result per input sequence, in input order."""
        results: list[EmbedResult | None] = [None] * len(sequences)
        for indices, batch in self.run(sequences):
            for i, result in zip(indices, batch, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def run(self, sequences: Sequence[str]) -> Iterator[tuple[list[int], list[EmbedResult]]]:
        """Results batch by batch as `(indices into sequences, results)`: first the
        sequences over the length limit, then each batch as soon as it is computed."""
        runnable = [i for i, seq in enumerate(sequences) if len(seq) <= self.max_length]
        rejected = sorted(set(range(len(sequences))) - set(runnable))
        if rejected:
            yield rejected, [EmbedResult(TOO_LONG, None) for _ in rejected]
        lengths = [len(sequences[i]) for i in runnable]
        batches = make_batches(lengths, self.max_tokens, embed_cost)
        for batch, vectors in run_batches(
            batches,
            lambda members: self._forward([sequences[runnable[m]] for m in members]),
            is_oom=is_oom,
            free_memory=lambda: free_device_memory(self.device),
            out_of_memory=lambda member: None,
            progress=Progress("embed", lengths),
            lengths=lengths,
        ):
            yield [runnable[m] for m in batch], [
                EmbedResult(OUT_OF_MEMORY, None) if v is None
                else EmbedResult(OK, v.astype(np.float32, copy=False))
                for v in vectors
            ]  # fmt: skip
