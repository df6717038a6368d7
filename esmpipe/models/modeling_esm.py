"""ESM-1b / ESM-2 encoders and their task heads, module for module as the checkpoints name them.

    EsmModel
      embeddings          EsmEmbeddings (word, token dropout, absolute positions)
      rotary_embeddings   EsmRotaryEmbedding (ESM-2 only)
      encoder.layer.N     pre-norm transformer layers
      encoder.emb_layer_norm_after
      pooler              optional, tanh(dense(<cls>))
      contact_head        logistic regression on attention maps

`EsmForMaskedLM`, `EsmForSequenceClassification` and `EsmForTokenClassification`
wrap an `EsmModel` under the prefix `esm.`. Not supported (the ESM checkpoints
never use them): decoder mode and cross-attention.

`EsmModel.forward_packed` is the inference path of the embedding engine: the
tokens of several sequences concatenated without padding, attention within
each sequence, and only the hidden states asked for, the forward stopping at
the deepest of them. Its values equal `forward`'s at the real tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from torch.nn import functional as F

from esmpipe.models.attention import EsmAttention
from esmpipe.models.config import EsmConfig
from esmpipe.models.contact import EsmContactPredictionHead
from esmpipe.models.embeddings import EsmEmbeddings
from esmpipe.models.heads import EsmClassificationHead, EsmLMHead, EsmPooler, gelu
from esmpipe.models.kernels import linear
from esmpipe.models.pretrained import EsmPreTrainedModel, ModelOutput
from esmpipe.models.rotary import EsmRotaryEmbedding

# -- outputs ------------------------------------------------------------------


@dataclasses.dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """last_hidden_state [B, L, C]; pooler_output [B, C]; hidden_states: N+1 x [B, L, C];
    attentions: N x [B, H, L, L]."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class _HeadOutput(ModelOutput):
    """Fields shared by the task heads' outputs: loss (scalar), logits, hidden_states,
    attentions (as in `BaseModelOutputWithPooling`)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class MaskedLMOutput(_HeadOutput):
    """loss (scalar); logits [B, L, vocab_size]; hidden_states; attentions."""


@dataclasses.dataclass
class SequenceClassifierOutput(_HeadOutput):
    """loss (scalar); logits [B, num_labels]; hidden_states; attentions."""


@dataclasses.dataclass
class TokenClassifierOutput(_HeadOutput):
    """loss (scalar); logits [B, L, num_labels]; hidden_states; attentions."""


# -- the encoder ------------------------------------------------------------------


class EsmIntermediate(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(self.dense(x))


class EsmOutput(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x)) + residual


class EsmLayer(nn.Module):
    """Pre-norm transformer layer: attention block, then LayerNorm -> MLP + residual."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.attention = EsmAttention(config)
        self.intermediate = EsmIntermediate(config)
        self.output = EsmOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, C] -> [B, L, C], attention probabilities [B, H, L, L] or None."""
        x, probs = self.attention(x, mask, rotary, output_attentions)
        return self.output(self.intermediate(self.LayerNorm(x)), x), probs

    def forward_packed(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        bounds: list[tuple[int, int]],
        max_len: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [T, C] packed tokens -> [T, C] (inference; see `EsmModel.forward_packed`)."""
        x = self.attention.forward_packed(x, cu_seqlens, bounds, max_len, rotary)
        dense = self.intermediate.dense
        h = linear(self.LayerNorm(x), dense.weight, dense.bias, gelu=True)
        return linear(h, self.output.dense.weight, self.output.dense.bias).add_(x)


class EsmEncoder(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(EsmLayer(config) for _ in range(config.num_hidden_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """x: [B, L, C] -> final states [B, L, C], hidden states, attentions.

        Hidden states are the input of every layer followed by the final (normed)
        output, N+1 in all, as the reference returns them.
        """
        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for layer in self.layer:
            if output_hidden_states:
                hidden_states.append(x)
            x, probs = layer(x, mask, rotary, output_attentions)
            if output_attentions:
                attentions.append(probs)
        x = self.emb_layer_norm_after(x)
        if output_hidden_states:
            hidden_states.append(x)
        return (
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )


# -- models -------------------------------------------------------------------------


class EsmModel(EsmPreTrainedModel):
    """The bare ESM encoder: token ids -> per-residue representations."""

    def __init__(self, config: EsmConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        if config.is_decoder or config.add_cross_attention:
            raise ValueError(
                "is_decoder / add_cross_attention: decoder mode is not supported by esmpipe "
                "(no ESM checkpoint uses it); set both to false"
            )
        if config.vocab_size is None:
            raise ValueError("vocab_size must be set to build a model")
        self.embeddings = EsmEmbeddings(config)
        if config.position_embedding_type == "rotary":
            self.rotary_embeddings = EsmRotaryEmbedding(config)
        else:
            self.rotary_embeddings = None
        self.encoder = EsmEncoder(config)
        self.pooler = EsmPooler(config) if add_pooling_layer else None
        # NOTE: the reference fixes the <eos> index at 2 here; that is config.eos_token_id
        # for every ESM vocabulary, and we take it from the config.
        eos = config.eos_token_id if config.eos_token_id is not None else 2
        self.contact_head = EsmContactPredictionHead(
            config.num_hidden_layers * config.num_attention_heads, bias=True, eos_idx=eos
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutputWithPooling | tuple:
        """input_ids [B, L] (or inputs_embeds [B, L, C]); attention_mask [B, L], 1 = token.

        position_ids [B, L]: absolute positions (default: padding-aware, from
        padding_idx+1) or rotary positions (default: 0..L-1).
        NOTE: `inputs_embeds` replaces only the word-embedding lookup; position
        embeddings, `emb_layer_norm_before` and the padding mask still apply, as the
        reference documents (transformers 5 skips the whole embedding block instead,
        which gives the same result for ESM-2 without padding).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids, attention_mask, position_ids, inputs_embeds)
        batch, length = x.shape[:2]
        mask = None
        if attention_mask is not None:
            # [B, 1, 1, L]: every query attends to the real tokens only.
            mask = attention_mask.bool()[:, None, None, :]
        rotary = None
        if self.rotary_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(length, device=x.device).unsqueeze(0)
            rotary = self.rotary_embeddings(x, position_ids)
        x, hidden_states, attentions = self.encoder(
            x, mask, rotary, output_attentions, output_hidden_states
        )
        pooled = self.pooler(x) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(x, pooled, hidden_states, attentions)
        return out if return_dict else out.to_tuple()

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        keep: Collection[int],
    ) -> dict[int, torch.Tensor]:
        """Hidden states of packed sequences, without padding (inference only).

        input_ids: [T], the tokens of each sequence (specials included) one after
        the other; lengths: tokens per sequence (sum T); keep: indices into the
        reference's `hidden_states` (0 the embeddings, k the output of layer k, N
        the final normed output, i.e. `last_hidden_state`).
        Returns {k: [T, C]} for each k in keep; layers past max(keep) do not run.
        """
        n_layers = len(self.encoder.layer)
        keep = set(keep)
        if not keep or min(keep) < 0 or max(keep) > n_layers:
            raise ValueError(f"keep: hidden-state indices within 0..{n_layers}, got {sorted(keep)}")
        device = input_ids.device
        bounds, start = [], 0
        for n in lengths:
            bounds.append((start, start + n))
            start += n
        if start != input_ids.shape[0]:
            raise ValueError(f"lengths sum to {start}, input_ids has {input_ids.shape[0]}")
        lengths_t = torch.as_tensor(list(lengths), device=device)
        # [T]: the sequence of each token and its position within it
        seq_index = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_t)
        offsets = torch.cumsum(lengths_t, 0) - lengths_t
        positions = torch.arange(start, device=device) - offsets[seq_index]
        cu_seqlens = F.pad(torch.cumsum(lengths_t, 0), (1, 0)).to(torch.int32)
        max_len = max(lengths, default=0)

        x = self.embeddings.forward_packed(input_ids, seq_index, positions)
        rotary = None
        if self.rotary_embeddings is not None:
            rotary = self.rotary_embeddings(x, positions)
        out: dict[int, torch.Tensor] = {}
        deepest = max(keep)
        for index, layer in enumerate(self.encoder.layer[: min(deepest, n_layers)]):
            if index in keep:
                out[index] = x
            x = layer.forward_packed(x, cu_seqlens, bounds, max_len, rotary)
        out[deepest] = x if deepest < n_layers else self.encoder.emb_layer_norm_after(x)
        return out

    def predict_contacts(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contact probabilities [B, L-2, L-2] for tokens [B, L] with <cls> and <eos>."""
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        out = self(tokens, attention_mask=attention_mask, output_attentions=True)
        # [B, N_layers, H, L, L]
        attns = torch.stack(out.attentions, dim=1)
        # Padding rows and columns are zeroed, as the original model does; it matters
        # here because the maps themselves are the features.
        mask = attention_mask.to(attns)
        attns = attns * mask[:, None, None, None, :] * mask[:, None, None, :, None]
        return self.contact_head(tokens, attns)


class EsmForMaskedLM(EsmPreTrainedModel):
    """ESM with its language-model head (the published checkpoints' class)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}

    def __init__(self, config: EsmConfig) -> None:
        super().__init__(config)
        self.esm = EsmModel(config, add_pooling_layer=False)
        self.lm_head = EsmLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> MaskedLMOutput | tuple:
        """logits [B, L, vocab_size]; labels [B, L] give the mean cross-entropy, -100 ignored."""
        out = self.esm(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.view(-1))
        result = MaskedLMOutput(loss, logits, out.hidden_states, out.attentions)
        return result if return_dict else result.to_tuple()

    def predict_contacts(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.esm.predict_contacts(tokens, attention_mask=attention_mask)


class EsmForSequenceClassification(EsmPreTrainedModel):
    """One prediction per sequence from the <cls> token."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.esm = EsmModel(config, add_pooling_layer=False)
        self.classifier = EsmClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> SequenceClassifierOutput | tuple:
        """logits [B, num_labels]; labels [B] (ids or values) or [B, num_labels] (multi-label).

        The loss follows config.problem_type; when unset it is chosen as the
        reference does (and stored in the config): 1 label -> regression (MSE),
        integer labels -> single-label (cross-entropy), else multi-label (BCE).
        """
        out = self.esm(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
        )
        logits = self.classifier(out.last_hidden_state)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                if self.num_labels == 1:
                    loss = MSELoss()(logits.squeeze(), labels.squeeze())
                else:
                    loss = MSELoss()(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels)
        result = SequenceClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return result if return_dict else result.to_tuple()


class EsmForTokenClassification(EsmPreTrainedModel):
    """One prediction per token (e.g. secondary structure)."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.esm = EsmModel(config, add_pooling_layer=False)
        # NOTE: hidden_dropout_prob, not classifier_dropout, as in the reference.
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> TokenClassifierOutput | tuple:
        """logits [B, L, num_labels]; labels [B, L] give the cross-entropy, -100 ignored."""
        out = self.esm(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        result = TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return result if return_dict else result.to_tuple()
