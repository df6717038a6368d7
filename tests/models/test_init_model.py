"""`esmpipe init-model` writes checkpoints that esmpipe and transformers load; presets are valid."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from esmpipe.cli import main
from esmpipe.models import EsmConfig, EsmForMaskedLM, EsmModel, EsmTokenizer
from esmpipe.models.presets import FOLDING_RESIDUES, PRESETS


@pytest.mark.parametrize("preset", ["tiny-esm2", "tiny-esm1b"])
def test_init_model_loads_in_both(tmp_path, preset):
    out = tmp_path / "ckpt"
    assert main(["init-model", "--preset", preset, "--output", str(out), "--seed", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    ours = EsmForMaskedLM.from_pretrained(out)
    ref, info = transformers.EsmForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = EsmTokenizer.from_pretrained(out)
    ref_tokenizer = transformers.EsmTokenizer.from_pretrained(out)
    batch = tokenizer(["MKTAYIAKQR", "MLG"], padding=True, return_tensors="pt")
    assert torch.equal(
        batch["input_ids"],
        ref_tokenizer(["MKTAYIAKQR", "MLG"], padding=True, return_tensors="pt")["input_ids"],
    )
    with torch.no_grad():
        assert_close(ours(**batch).logits, ref.eval()(**batch).logits, atol=1e-5, rtol=1e-5)
    # the embedding command's way of loading it
    assert EsmModel.from_pretrained(out, add_pooling_layer=False).pooler is None


def test_seed_is_reproducible(tmp_path):
    for name in ("a", "b"):
        main(
            ["init-model", "--preset", "tiny-esm2", "--output", str(tmp_path / name), "--seed", "7"]
        )
    a = EsmForMaskedLM.from_pretrained(tmp_path / "a").state_dict()
    b = EsmForMaskedLM.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["init-model", "--preset", "tiny-esm2", "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main(["init-model", "--preset", "tiny-esm2", "--output", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_every_preset_is_a_valid_config():
    for preset in PRESETS.values():
        config = EsmConfig.from_dict(preset.config_dict())
        transformers.EsmConfig(**config.to_dict())
    shapes = {
        n: (PRESETS[n].config["hidden_size"], PRESETS[n].config["num_hidden_layers"])
        for n in ("esm2_t6_8M", "esm2_t12_35M", "esm2_t30_150M", "esm2_t33_650M")
    }
    assert shapes == {
        "esm2_t6_8M": (320, 6),
        "esm2_t12_35M": (480, 12),
        "esm2_t30_150M": (640, 30),
        "esm2_t33_650M": (1280, 33),
    }


def test_folding_preset_vocabularies():
    """Folding tokenizer ids are AlphaFold residue indices (20 = unknown); stem keeps ESM-2's."""
    preset = PRESETS["tiny-esmfold"]
    config = EsmConfig.from_dict(preset.config_dict())
    assert config.is_folding_model and config.vocab_list[:4] == ["<cls>", "<pad>", "<eos>", "<unk>"]
    assert len(config.vocab_list) == config.vocab_size == 33
    assert config.esmfold_config.trunk.num_blocks == 2
    tokenizer = EsmTokenizer(vocab=preset.vocab)
    ids = tokenizer(FOLDING_RESIDUES + "X", add_special_tokens=False)["input_ids"]
    assert ids == list(range(21))
    assert tokenizer("AJA", add_special_tokens=False)["input_ids"] == [0, 20, 0]
    ref_config = transformers.EsmConfig(**config.to_dict())
    assert ref_config.esmfold_config.trunk.structure_module.num_blocks == 2
