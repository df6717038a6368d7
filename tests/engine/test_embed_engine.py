"""Embedding engine: pooling equals a direct forward, batching does not change results,
long sequences and out-of-memory batches get their statuses."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from esmpipe.engine.embed import Embedder, default_max_length
from esmpipe.models import EsmModel, EsmTokenizer


def _sequences(n: int, seed: int = 0, max_len: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWYXBUZO", k=rng.randint(1, max_len)))
            for _ in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_esm2: Path) -> tuple[EsmModel, EsmTokenizer]:
    model = EsmModel.from_pretrained(tiny_esm2, add_pooling_layer=False).eval()
    return model, EsmTokenizer.from_pretrained(tiny_esm2)


def _direct(model: EsmModel, tokenizer: EsmTokenizer, sequence: str, layer: int) -> np.ndarray:
    """Unbatched reference: one sequence, no padding, mean over positions 1..L."""
    ids = tokenizer(sequence, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    return hidden[0, 1:-1].mean(dim=0).numpy()


@pytest.mark.parametrize("layer", [-1, 1])
def test_equals_direct_forward_and_batch_independent(model_and_tokenizer, layer: int) -> None:
    model, tokenizer = model_and_tokenizer
    sequences = _sequences(12)
    big = Embedder(model, tokenizer, layer=layer, max_tokens=10_000).embed(sequences)
    small = Embedder(model, tokenizer, layer=layer, max_tokens=50).embed(sequences)
    for seq, a, b in zip(sequences, big, small, strict=True):
        assert a.status == b.status == "ok"
        assert a.embedding.dtype == np.float32 and a.embedding.shape == (model.config.hidden_size,)
        np.testing.assert_allclose(a.embedding, _direct(model, tokenizer, seq, layer), atol=1e-5)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_every_residue_is_one_token(model_and_tokenizer) -> None:
    """J is not in ESM-2's vocabulary: "MJJK" embeds like M <unk> <unk> K, not M <unk> K."""
    model, tokenizer = model_and_tokenizer
    (result,) = Embedder(model, tokenizer).embed(["MJJK"])
    ids = tokenizer("M <unk> <unk> K", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 6
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state[0, 1:-1].mean(dim=0).numpy()
    np.testing.assert_allclose(result.embedding, want, atol=1e-5)


def test_too_long(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    results = Embedder(model, tokenizer, max_length=10).embed(["A" * 10, "A" * 11])
    assert [r.status for r in results] == ["ok", "too_long"]
    assert results[1].embedding is None


def test_oom_splits_batches(model_and_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = model_and_tokenizer
    poisoned = "M" * 45  # the only sequence of its length: it runs out of memory even alone
    sequences = [*_sequences(8, seed=3), poisoned]
    expected = Embedder(model, tokenizer).embed(sequences)
    embedder = Embedder(model, tokenizer, max_tokens=10_000)
    real_forward = model.forward
    batch_sizes: list[int] = []

    def forward(input_ids, **kwargs):
        batch_sizes.append(input_ids.shape[0])
        too_big = input_ids.shape[0] > 1
        alone = input_ids.shape[0] == 1 and input_ids.shape[1] == len(poisoned) + 2
        if too_big or alone:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    results = embedder.embed(sequences)
    assert batch_sizes[0] == 9 and 1 in batch_sizes
    for seq, got, want in zip(sequences, results, expected, strict=True):
        if seq == poisoned:
            assert got.status == "out_of_memory" and got.embedding is None
        else:
            assert got.status == "ok"
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)


def test_default_max_length(model_and_tokenizer) -> None:
    model, _ = model_and_tokenizer
    config = model.config
    if config.position_embedding_type == "rotary":
        assert default_max_length(config) == 1022
    else:
        expected = config.max_position_embeddings - config.pad_token_id - 3
        assert default_max_length(config) == expected


def test_absolute_positions_limit_is_the_position_table() -> None:
    from esmpipe.models import EsmConfig
    from esmpipe.models.config import ESM2_VOCAB

    config = EsmConfig(vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=16,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       max_position_embeddings=40, position_embedding_type="absolute",
                       emb_layer_norm_before=True)  # fmt: skip
    model = EsmModel(config, add_pooling_layer=False).eval()
    tokenizer = EsmTokenizer(vocab=list(ESM2_VOCAB))
    embedder = Embedder(model, tokenizer)
    assert embedder.max_length == 36  # 40 rows, positions start at pad + 1 = 2, minus BOS/EOS
    results = embedder.embed(["A" * 36, "A" * 37])  # the longest that fits runs
    assert [r.status for r in results] == ["ok", "too_long"]
    with pytest.raises(ValueError, match="at most 36"):
        Embedder(model, tokenizer, max_length=37)
