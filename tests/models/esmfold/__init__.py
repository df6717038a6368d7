"""Tests of the folding model; shared tiny configurations live here (import-light)."""

from __future__ import annotations

import copy
from typing import Any

ESM2_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip

TINY_TRUNK: dict[str, Any] = {
    "num_blocks": 2,
    "sequence_state_dim": 32,
    "pairwise_state_dim": 16,
    "sequence_head_width": 8,
    "pairwise_head_width": 8,
    "position_bins": 8,
    "max_recycles": 2,
    "chunk_size": None,
    "dropout": 0.0,
    "structure_module": {
        "sequence_dim": 24,
        "pairwise_dim": 8,
        "ipa_dim": 8,
        "resnet_dim": 16,
        "num_heads_ipa": 2,
        "num_qk_points": 2,
        "num_v_points": 2,
        "num_blocks": 2,
        "dropout_rate": 0.1,
    },
}


def tiny_config_dict(*, fp16_esm: bool = False, **trunk: Any) -> dict[str, Any]:
    """config.json of a tiny ESMFold (2-layer rotary stem, 2 trunk blocks, 2 IPA blocks)."""
    trunk_cfg = copy.deepcopy(TINY_TRUNK)
    trunk_cfg.update(trunk)
    return {
        "architectures": ["EsmForProteinFolding"],
        "model_type": "esm",
        "vocab_size": 33,
        "pad_token_id": 1,
        "mask_token_id": 32,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,
        "layer_norm_eps": 1e-5,
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "token_dropout": True,
        "is_folding_model": True,
        "vocab_list": list(ESM2_VOCAB),
        "esmfold_config": {
            "fp16_esm": fp16_esm,
            "esm_type": "esm2_tiny",
            "lddt_head_hid_dim": 16,
            "trunk": trunk_cfg,
        },
    }
