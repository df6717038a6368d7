"""Every ESM class against `transformers` on the same random weights (fp32, 1e-5).

The reference runs with eager attention so that it returns attention maps; ours
is compared both with maps (explicit softmax) and without (SDPA). Padded
positions are compared too: both implementations let padded queries attend to
the real tokens, so even their (meaningless) outputs agree.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

import esmpipe.models as ours

SHAPES = ["esm2", "esm1b", "esm1b_td"]
TOL = dict(atol=1e-5, rtol=1e-5)


def load_pair(folder, class_name, **kwargs):
    mine = getattr(ours, class_name).from_pretrained(folder, **kwargs)
    ref = getattr(transformers, class_name).from_pretrained(
        folder, attn_implementation="eager", **kwargs
    )
    return mine.eval(), ref.eval()


def with_maps(model, ids, mask, labels):
    """A forward with labels that also returns every hidden state and attention map."""
    return model(
        ids,
        attention_mask=mask,
        labels=labels,
        output_hidden_states=True,
        output_attentions=True,
    )


def assert_same_outputs(a, b, fields=("logits",)):
    for name in fields:
        assert_close(getattr(a, name), getattr(b, name), **TOL)
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert_close(x, y, **TOL)
    assert len(a.attentions) == len(b.attentions)
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert_close(x, y, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pooling", [True, False])
def test_esm_model(reference_checkpoint, make_batch, shape, pooling):
    folder = reference_checkpoint("EsmModel", shape)
    mine, ref = load_pair(folder, "EsmModel", add_pooling_layer=pooling)
    assert (mine.pooler is None) == (not pooling)
    ids, mask = make_batch(1)
    with torch.no_grad():
        a = mine(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        b = ref(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        fast = mine(ids, attention_mask=mask)  # SDPA path
    fields = ("last_hidden_state", "pooler_output") if pooling else ("last_hidden_state",)
    assert_same_outputs(a, b, fields)
    assert_close(fast.last_hidden_state, b.last_hidden_state, **TOL)
    assert fast.hidden_states is None and fast.attentions is None
    assert len(a.hidden_states) == mine.config.num_hidden_layers + 1
    assert a.attentions[0].shape == (ids.shape[0], 4, ids.shape[1], ids.shape[1])
    # dict-style and tuple access
    assert a["last_hidden_state"] is a.last_hidden_state
    assert a[0] is a.last_hidden_state


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_lm_and_contacts(reference_checkpoint, make_batch, shape):
    folder = reference_checkpoint("EsmForMaskedLM", shape)
    mine, ref = load_pair(folder, "EsmForMaskedLM")
    assert mine.lm_head.decoder.weight is mine.esm.embeddings.word_embeddings.weight
    ids, mask = make_batch(2)
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, ::3] = -100
    with torch.no_grad():
        a = with_maps(mine, ids, mask, labels)
        b = with_maps(ref, ids, mask, labels)
        fast = mine(ids, attention_mask=mask, labels=labels)
        contacts = mine.predict_contacts(ids, mask)
        contacts_ref = ref.predict_contacts(ids, mask)
        contacts_base = mine.esm.predict_contacts(ids, attention_mask=mask)
    assert_same_outputs(a, b, ("logits", "loss"))
    assert_close(fast.logits, b.logits, **TOL)
    assert_close(fast.loss, b.loss, **TOL)
    assert contacts.shape == (ids.shape[0], ids.shape[1] - 2, ids.shape[1] - 2)
    assert_close(contacts, contacts_ref, **TOL)
    assert_close(contacts_base, contacts_ref, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "num_labels, problem",
    [
        (1, "regression"),
        (3, "single_label_classification"),
        (3, "multi_label_classification"),
        (2, "regression"),
    ],
)
def test_sequence_classification(reference_checkpoint, make_batch, shape, num_labels, problem):
    # The 2-label regression case sets problem_type explicitly; the others let the
    # model infer it from num_labels and the label dtype, as the reference does.
    explicit = problem if num_labels == 2 else None
    folder = reference_checkpoint(
        "EsmForSequenceClassification", shape, num_labels=num_labels, problem_type=explicit
    )
    mine, ref = load_pair(folder, "EsmForSequenceClassification")
    ids, mask = make_batch(3)
    generator = torch.Generator().manual_seed(0)
    batch = ids.shape[0]
    if problem == "single_label_classification":
        labels = torch.randint(0, num_labels, (batch,), generator=generator)
    elif problem == "multi_label_classification":
        labels = torch.randint(0, 2, (batch, num_labels), generator=generator).float()
    else:
        labels = torch.randn(
            (batch, num_labels) if num_labels > 1 else (batch,), generator=generator
        )
    with torch.no_grad():
        a = with_maps(mine, ids, mask, labels)
        b = with_maps(ref, ids, mask, labels)
    assert mine.config.problem_type == ref.config.problem_type == problem
    assert a.logits.shape == (batch, num_labels)
    assert_same_outputs(a, b, ("logits", "loss"))


@pytest.mark.parametrize("shape", SHAPES)
def test_token_classification(reference_checkpoint, make_batch, shape):
    folder = reference_checkpoint("EsmForTokenClassification", shape, num_labels=5)
    mine, ref = load_pair(folder, "EsmForTokenClassification")
    ids, mask = make_batch(4)
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(1))
    labels[mask == 0] = -100
    with torch.no_grad():
        a = with_maps(mine, ids, mask, labels)
        b = with_maps(ref, ids, mask, labels)
    assert a.logits.shape == (*ids.shape, 5)
    assert_same_outputs(a, b, ("logits", "loss"))


@pytest.mark.parametrize("shape", SHAPES)
def test_position_ids(reference_checkpoint, make_batch, shape):
    folder = reference_checkpoint("EsmForMaskedLM", shape)
    mine, ref = load_pair(folder, "EsmForMaskedLM")
    ids, mask = make_batch(5)
    # Stretched positions (a shift alone would not change rotary attention), inside
    # max_position_embeddings for the absolute models.
    position_ids = (torch.arange(ids.shape[1]) * 2 + 2).expand_as(ids)
    with torch.no_grad():
        a = mine(ids, attention_mask=mask, position_ids=position_ids)
        b = ref(ids, attention_mask=mask, position_ids=position_ids)
        default = mine(ids, attention_mask=mask)
    assert_close(a.logits, b.logits, **TOL)
    assert not torch.allclose(a.logits, default.logits)


def test_inputs_embeds_rotary(reference_checkpoint, make_batch):
    folder = reference_checkpoint("EsmModel", "esm2")
    mine, ref = load_pair(folder, "EsmModel")
    ids, _ = make_batch(6, lengths=(9, 9), with_mask_tokens=False)
    embeds = torch.randn(*ids.shape, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = mine(inputs_embeds=embeds, output_hidden_states=True)
        b = ref(inputs_embeds=embeds, output_hidden_states=True)
        from_ids = mine(input_ids=ids)
        # Token dropout needs input_ids; without <mask> tokens it is a fixed 0.88 scale.
        from_lookup = mine(inputs_embeds=mine.embeddings.word_embeddings(ids) * (1 - 0.15 * 0.8))
    assert_close(a.last_hidden_state, b.last_hidden_state, **TOL)
    assert_close(a.pooler_output, b.pooler_output, **TOL)
    assert_close(from_lookup.last_hidden_state, from_ids.last_hidden_state, **TOL)


def test_inputs_embeds_absolute(reference_checkpoint, make_batch):
    # NOTE: transformers 5 skips the embedding block for inputs_embeds (so no absolute
    # positions); we follow the documented meaning (embeds replace the lookup only),
    # which equals the reference's input_ids path.
    folder = reference_checkpoint("EsmModel", "esm1b")
    mine, ref = load_pair(folder, "EsmModel")
    ids, mask = make_batch(7, lengths=(10, 10), with_mask_tokens=False)
    with torch.no_grad():
        a = mine(inputs_embeds=mine.embeddings.word_embeddings(ids), attention_mask=mask)
        b = ref(input_ids=ids, attention_mask=mask)
    assert_close(a.last_hidden_state, b.last_hidden_state, **TOL)


def test_token_dropout_applies_in_eval(reference_checkpoint, make_batch):
    """As in the reference, <mask> rescaling is part of inference, not a training switch."""
    folder = reference_checkpoint("EsmModel", "esm2")
    mine, _ = load_pair(folder, "EsmModel")
    ids, mask = make_batch(8)
    assert not mine.training
    with torch.no_grad():
        on = mine.embeddings(ids, mask)
        mine.embeddings.token_dropout = False
        off = mine.embeddings(ids, mask)
    assert not torch.allclose(on, off)
    assert torch.all(on[ids == 32] == 0)


def test_unpadded_rows_match_single_sequences(reference_checkpoint, make_batch):
    """A row of a padded batch equals that sequence alone, at its real positions."""
    folder = reference_checkpoint("EsmForMaskedLM", "esm1b_td")
    mine = ours.EsmForMaskedLM.from_pretrained(folder)
    ids, mask = make_batch(9)
    with torch.no_grad():
        batch = mine(ids, attention_mask=mask).logits
        n = int(mask[1].sum())
        alone = mine(ids[1:2, :n]).logits
    assert_close(batch[1:2, :n], alone, **TOL)
