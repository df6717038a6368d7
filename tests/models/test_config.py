"""EsmConfig: round trips with transformers.EsmConfig, validation naming the field."""

from __future__ import annotations

import json

import pytest
import transformers

from esmpipe.models import EsmConfig


def test_reads_reference_config(tiny_config, tmp_path):
    ref = transformers.EsmConfig(**tiny_config("esm2"), num_labels=3, problem_type="regression")
    ref.save_pretrained(tmp_path)
    mine = EsmConfig.from_pretrained(tmp_path)
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "position_embedding_type",
        "token_dropout",
        "mask_token_id",
        "pad_token_id",
        "rope_theta",
        "layer_norm_eps",
        "eos_token_id",
        "problem_type",
    ):
        assert getattr(mine, name) == getattr(ref, name), name
    assert mine.num_labels == 3
    assert mine.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert mine.extra["transformers_version"] == transformers.__version__


def test_reference_reads_ours(tiny_config, tmp_path):
    mine = EsmConfig.from_dict(tiny_config("esm1b"), num_labels=4)
    mine.save_pretrained(tmp_path)
    ref = transformers.EsmConfig.from_pretrained(tmp_path)
    assert ref.num_labels == 4
    assert ref.position_embedding_type == "absolute"
    assert ref.emb_layer_norm_before is True
    assert ref.hidden_size == 32
    assert ref.model_type == "esm"


def test_unknown_keys_round_trip(tiny_config, tmp_path):
    data = {
        **tiny_config("esm2"),
        "some_future_key": {"a": [1, 2]},
        "_name_or_path": "x",
        "torch_dtype": "float16",
    }
    config = EsmConfig.from_dict(data)
    assert config.dtype == "float16"
    out = config.to_dict()
    assert out["some_future_key"] == {"a": [1, 2]}
    assert out["_name_or_path"] == "x"
    config.save_pretrained(tmp_path)
    again = EsmConfig.from_json_file(tmp_path / "config.json")
    assert again.to_dict() == out
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "esm"


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
        (dict(vocab_size=-3), "vocab_size"),
        (dict(pad_token_id=99), "pad_token_id"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(model_type="bert"), "model_type"),
    ],
)
def test_validation_names_the_field(tiny_config, override, field):
    with pytest.raises(ValueError, match=field):
        EsmConfig.from_dict({**tiny_config("esm2"), **override})


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        EsmConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        EsmConfig.from_pretrained(tmp_path)


def test_folding_config_round_trips(tiny_config, tmp_path):
    from esmpipe.models.presets import PRESETS

    folding = PRESETS["tiny-esmfold"].config_dict()
    ref = transformers.EsmConfig(**folding)
    ref.save_pretrained(tmp_path / "theirs")
    mine = EsmConfig.from_pretrained(tmp_path / "theirs")
    assert mine.is_folding_model
    assert mine.vocab_list == list(ref.vocab_list)
    assert mine.esmfold_config.trunk.num_blocks == ref.esmfold_config.trunk.num_blocks == 2
    assert mine.esmfold_config.trunk.structure_module.num_blocks == 2
    mine.save_pretrained(tmp_path / "ours")
    back = transformers.EsmConfig.from_pretrained(tmp_path / "ours")
    assert back.esmfold_config.trunk.sequence_state_dim == 64
    assert back.esmfold_config.trunk.structure_module.ipa_dim == 8
    assert list(back.vocab_list) == mine.vocab_list
    # a folding config without a vocabulary gets the ESM-2 alphabet, as in the reference
    bare = EsmConfig.from_dict({**tiny_config("esm2"), "is_folding_model": True})
    assert bare.vocab_list == list(transformers.EsmConfig(is_folding_model=True).vocab_list)
