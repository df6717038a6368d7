"""Named model shapes for `esmpipe init-model` and the benchmarks.

Each preset is a `config.json` dict plus the tokenizer vocabulary written beside
it. The `tiny-*` presets make random checkpoints small enough for tests and the
offline demo; the `esm2_*` presets carry the published ESM-2 shapes (weights are
random: they are for throughput measurements, not predictions).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from esmpipe.models.config import ESM2_VOCAB

# ESMFold's own tokenizer: residue i of the AlphaFold order is id i, 20 is
# unknown (so "X", and anything else outside the vocabulary, maps to 20). The
# language-model stem keeps the ESM-2 alphabet in config.vocab_list.
FOLDING_RESIDUES = "ARNDCQEGHILKMFPSTWYV"
FOLDING_VOCAB: tuple[str, ...] = (*FOLDING_RESIDUES, "<unk>", "<pad>", "<cls>", "<eos>", "<mask>")


@dataclass(frozen=True)
class Preset:
    """A config.json dict, the tokenizer vocabulary, and the model class to build."""

    name: str
    config: dict[str, Any]
    vocab: tuple[str, ...] = ESM2_VOCAB
    model_class: str = "EsmForMaskedLM"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def config_dict(self) -> dict[str, Any]:
        """A fresh deep copy of the config dict (safe to modify)."""
        return copy.deepcopy(self.config)


def _esm2(hidden: int, layers: int, heads: int, **overrides: Any) -> dict[str, Any]:
    config = dict(
        vocab_size=len(ESM2_VOCAB),
        mask_token_id=ESM2_VOCAB.index("<mask>"),
        pad_token_id=ESM2_VOCAB.index("<pad>"),
        eos_token_id=ESM2_VOCAB.index("<eos>"),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        architectures=["EsmForMaskedLM"],
    )
    config.update(overrides)
    return config


_TINY_ESMFOLD = dict(
    fp16_esm=False,
    use_esm_attn_map=False,
    esm_ablate_pairwise=False,
    esm_ablate_sequence=False,
    esm_input_dropout=0.0,
    embed_aa=True,
    bypass_lm=False,
    lddt_head_hid_dim=16,
    trunk=dict(
        num_blocks=2,
        sequence_state_dim=64,
        pairwise_state_dim=32,
        sequence_head_width=32,
        pairwise_head_width=16,
        position_bins=32,
        dropout=0.0,
        layer_drop=0.0,
        cpu_grad_checkpoint=False,
        max_recycles=1,
        chunk_size=None,
        structure_module=dict(
            sequence_dim=64,
            pairwise_dim=32,
            ipa_dim=8,
            resnet_dim=16,
            num_heads_ipa=2,
            num_qk_points=2,
            num_v_points=2,
            dropout_rate=0.0,
            num_blocks=2,
            num_transition_layers=1,
            num_resnet_blocks=1,
            num_angles=7,
            trans_scale_factor=10,
            epsilon=1e-8,
            inf=1e5,
        ),
    ),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny-esm2", _esm2(32, 2, 4), description="2-layer rotary ESM-2 shape, hidden 32"),
        Preset(
            "tiny-esm1b",
            _esm2(32, 2, 4, position_embedding_type="absolute", emb_layer_norm_before=True),
            description="2-layer ESM-1b shape (absolute positions, LayerNorm before), hidden 32",
        ),
        Preset(
            "tiny-esmfold",
            _esm2(
                32,
                2,
                4,
                is_folding_model=True,
                esmfold_config=_TINY_ESMFOLD,
                vocab_list=list(ESM2_VOCAB),
                architectures=["EsmForProteinFolding"],
            ),
            vocab=FOLDING_VOCAB,
            model_class="EsmForProteinFolding",
            description="ESMFold with a tiny ESM-2 stem, 2 trunk blocks, 2 structure-module blocks",
        ),
        Preset("esm2_t6_8M", _esm2(320, 6, 20), description="facebook/esm2_t6_8M_UR50D shape"),
        Preset("esm2_t12_35M", _esm2(480, 12, 20), description="facebook/esm2_t12_35M_UR50D shape"),
        Preset(
            "esm2_t30_150M", _esm2(640, 30, 20), description="facebook/esm2_t30_150M_UR50D shape"
        ),
        Preset(
            "esm2_t33_650M", _esm2(1280, 33, 20), description="facebook/esm2_t33_650M_UR50D shape"
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a KeyError lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
