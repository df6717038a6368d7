"""The published `facebook/esmfold_v1` configuration: names, shapes, dtypes equal the reference's.

Both models are built on the meta device, so the 3.5B-parameter model costs no memory.
The config below carries the published dimensions (ESM-2 t36 3B stem; 48-block trunk).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from esmpipe.models import EsmConfig, EsmForProteinFolding

from . import ESM2_VOCAB

ESMFOLD_V1_CONFIG = {
    "architectures": ["EsmForProteinFolding"],
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout": None,
    "emb_layer_norm_before": False,
    "esmfold_config": {
        "bypass_lm": False,
        "embed_aa": True,
        "esm_ablate_pairwise": False,
        "esm_ablate_sequence": False,
        "esm_input_dropout": 0,
        "esm_type": "esm2_3B",
        "fp16_esm": False,
        "lddt_head_hid_dim": 128,
        "trunk": {
            "chunk_size": None,
            "cpu_grad_checkpoint": False,
            "dropout": 0,
            "layer_drop": 0,
            "max_recycles": 4,
            "num_blocks": 48,
            "pairwise_head_width": 32,
            "pairwise_state_dim": 128,
            "position_bins": 32,
            "sequence_head_width": 32,
            "sequence_state_dim": 1024,
            "structure_module": {
                "dropout_rate": 0.1,
                "epsilon": 1e-08,
                "inf": 100000.0,
                "ipa_dim": 16,
                "num_angles": 7,
                "num_blocks": 8,
                "num_heads_ipa": 12,
                "num_qk_points": 4,
                "num_resnet_blocks": 2,
                "num_transition_layers": 1,
                "num_v_points": 8,
                "pairwise_dim": 128,
                "resnet_dim": 128,
                "sequence_dim": 384,
                "trans_scale_factor": 10,
            },
        },
        "use_esm_attn_map": False,
    },
    "hidden_dropout_prob": 0.0,
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 10240,
    "is_folding_model": True,
    "layer_norm_eps": 1e-05,
    "mask_token_id": 32,
    "max_position_embeddings": 1026,
    "model_type": "esm",
    "num_attention_heads": 40,
    "num_hidden_layers": 36,
    "pad_token_id": 1,
    "position_embedding_type": "rotary",
    "token_dropout": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_list": ESM2_VOCAB,
    "vocab_size": 33,
}


def _config(fp16_esm: bool) -> dict:
    data = copy.deepcopy(ESMFOLD_V1_CONFIG)
    data["esmfold_config"]["fp16_esm"] = fp16_esm
    return data


@pytest.mark.parametrize("fp16_esm", [False, True])
def test_published_config_matches_reference_on_meta(fp16_esm):
    data = _config(fp16_esm)
    reference_config = transformers.EsmConfig(
        **{k: v for k, v in data.items() if k != "torch_dtype"}
    )
    with torch.device("meta"):
        reference = transformers.EsmForProteinFolding(reference_config)
        ours = EsmForProteinFolding(EsmConfig.from_dict(data))
    theirs = {k: (tuple(v.shape), v.dtype) for k, v in reference.state_dict().items()}
    mine = {k: (tuple(v.shape), v.dtype) for k, v in ours.state_dict().items()}
    assert sorted(set(theirs) - set(mine)) == []
    assert sorted(set(mine) - set(theirs)) == []
    mismatched = {k: (mine[k], theirs[k]) for k in theirs if mine[k] != theirs[k]}
    assert mismatched == {}
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())
    # The published model: 3B stem, 48 trunk blocks, 8 structure-module blocks.
    assert len(ours.trunk.blocks) == 48
    assert ours.esm_s_combine.shape == (37,)
    assert ours.trunk.chunk_size is None
