"""Our models on their own: construction, initialisation, training mode, outputs, errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from esmpipe.models import (
    EsmConfig,
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)


@pytest.fixture
def config(tiny_config):
    return EsmConfig.from_dict(
        tiny_config("esm2", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    )


def test_initialisation_follows_the_reference(config):
    torch.manual_seed(0)
    model = EsmForMaskedLM(config)
    assert model.lm_head.decoder.weight is model.esm.embeddings.word_embeddings.weight
    assert torch.all(model.lm_head.bias == 0)
    layer = model.esm.encoder.layer[0]
    assert torch.all(layer.attention.LayerNorm.weight == 1)
    assert torch.all(layer.attention.self.query.bias == 0)
    std = layer.intermediate.dense.weight.std().item()
    assert 0.015 < std < 0.025  # normal(0, initializer_range=0.02)
    pad = config.pad_token_id
    assert torch.all(model.esm.embeddings.word_embeddings.weight[pad] == 0)
    assert model.esm.rotary_embeddings.inv_freq.shape == (config.head_dim // 2,)
    names = set(model.state_dict())
    assert "esm.rotary_embeddings.inv_freq" in names  # persistent, as in the reference
    assert "esm.embeddings.position_ids" not in names  # non-persistent
    assert "esm.contact_head.regression.weight" in names


def test_training_mode_backward(config, make_batch):
    torch.manual_seed(0)
    model = EsmForMaskedLM(config).train()
    ids, mask = make_batch(0)
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grad = model.esm.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    # the explicit-softmax path trains too
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=labels, output_attentions=True)
    out.loss.backward()
    assert torch.isfinite(model.lm_head.dense.weight.grad).all()


def test_sdpa_and_explicit_paths_agree(config, make_batch):
    torch.manual_seed(1)
    model = EsmModel(config).eval()
    ids, mask = make_batch(1)
    with torch.no_grad():
        fast = model(ids, attention_mask=mask)
        slow = model(ids, attention_mask=mask, output_attentions=True)
    assert_close(fast.last_hidden_state, slow.last_hidden_state, atol=1e-5, rtol=1e-5)
    # probabilities are zero on padded keys and sum to one
    probs = slow.attentions[0]
    assert torch.all(probs[1, :, :, mask[1] == 0] == 0)
    assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_output_access(config, make_batch):
    model = EsmForTokenClassification(config).eval()
    ids, mask = make_batch(2)
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    assert out["logits"] is out.logits and "loss" not in out
    assert out.keys() == ["logits", "hidden_states"]
    assert list(dict(out)) == ["logits", "hidden_states"]
    logits, hidden = out  # tuple unpacking skips None fields, as in the reference
    assert logits is out.logits and hidden is out.hidden_states
    as_tuple = model(ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    with pytest.raises(KeyError):
        out["pooler_output"]


def test_input_errors(config, tiny_config):
    model = EsmModel(config)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="is_decoder"):
        EsmModel(EsmConfig.from_dict(tiny_config("esm2", is_decoder=True)))
    with pytest.raises(TypeError, match="EsmConfig"):
        EsmModel({"hidden_size": 32})


def test_sequence_classifier_regression_with_one_label(tiny_config, make_batch):
    model = EsmForSequenceClassification(EsmConfig.from_dict(tiny_config("esm1b", num_labels=1)))
    ids, mask = make_batch(3)
    out = model(ids, attention_mask=mask, labels=torch.randn(ids.shape[0]))
    assert model.config.problem_type == "regression"
    assert out.logits.shape == (ids.shape[0], 1) and out.loss.ndim == 0


def test_save_and_reload_our_own(config, make_batch, tmp_path):
    torch.manual_seed(2)
    model = EsmForMaskedLM(config).eval()
    model.save_pretrained(tmp_path)
    again = EsmForMaskedLM.from_pretrained(tmp_path)
    assert not again.training
    ids, mask = make_batch(4)
    with torch.no_grad():
        assert torch.equal(
            model(ids, attention_mask=mask).logits, again(ids, attention_mask=mask).logits
        )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
