"""Embedding engine against transformers (the oracle), on random tiny checkpoints.

Every output (requested hidden states pooled, BOS, per-residue, log-probabilities,
pseudo-perplexity) equals what `transformers.EsmForMaskedLM` gives for the same
checkpoint within 1e-5 in fp32 (per-residue within float16 rounding); windows,
batching and padding never change a result that fits in one window.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from esmpipe.engine.embed import (
    Embedder,
    default_window,
    resolve_layers,
    window_bounds,
)
from esmpipe.models import EsmForMaskedLM, EsmModel, EsmTokenizer

ATOL = 1e-5


def _sequences(n: int, seed: int = 0, max_len: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWYXBUZO", k=rng.randint(1, max_len)))
            for _ in range(n)]  # fmt: skip


@pytest.fixture(scope="module", params=["esm2", "esm1b_td"])
def pair(request, reference_checkpoint, esm2_vocab_file):
    """(our EsmForMaskedLM, transformers' EsmForMaskedLM, tokenizer) on one random checkpoint."""
    import transformers

    folder = reference_checkpoint("EsmForMaskedLM", request.param)
    ours = EsmForMaskedLM.from_pretrained(folder).eval()
    ref = transformers.EsmForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()
    return ours, ref, EsmTokenizer(esm2_vocab_file)


def _ref_forward(ref, tokenizer: EsmTokenizer, sequence: str, mask_at: int | None = None):
    """transformers on one unpadded sequence: (hidden_states, log-softmax [L+2, V], ids)."""
    ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
    if mask_at is not None:
        ids = ids.clone()
        ids[0, mask_at + 1] = tokenizer.mask_token_id
    with torch.no_grad():
        out = ref(input_ids=ids, output_hidden_states=True)
    return out.hidden_states, out.logits[0].log_softmax(-1), ids[0]


def _ref_log_probs(ref, tokenizer, sequence: str) -> np.ndarray:
    _, logp, ids = _ref_forward(ref, tokenizer, sequence)
    return logp[torch.arange(1, len(sequence) + 1), ids[1:-1]].numpy()


def _assert_float16_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float16 and got.shape == want.shape
    # float16 keeps 11 significant bits: half an ulp is 2**-11 relative
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-10, atol=1e-6)


def test_every_output_equals_transformers(pair) -> None:
    ours, ref, tokenizer = pair
    sequences = _sequences(10, seed=1)
    n_layers = ours.config.num_hidden_layers
    embedder = Embedder(ours, tokenizer, layers=[-1, 0, 1], include=["mean", "bos", "per_residue"],
                        lm_score="unmasked", max_tokens=60)  # fmt: skip
    assert embedder.spec.layers == (n_layers, 0, 1)
    results = embedder.embed(sequences)
    for seq, result in zip(sequences, results, strict=True):
        hidden, _, _ = _ref_forward(ref, tokenizer, seq)
        assert result.status == "ok" and not result.windowed
        want = hidden[n_layers][0, 1:-1].numpy()
        assert result.embedding.dtype == np.float32
        np.testing.assert_allclose(result.embedding, want.mean(0), atol=ATOL)
        assert sorted(result.layers) == [0, 1]
        for layer in (0, 1):
            want_layer = hidden[layer][0, 1:-1].numpy().mean(0)
            np.testing.assert_allclose(result.layers[layer], want_layer, atol=ATOL)
        np.testing.assert_allclose(result.bos, hidden[n_layers][0, 0].numpy(), atol=ATOL)
        _assert_float16_close(result.per_residue, want)
        want_lp = _ref_log_probs(ref, tokenizer, seq).mean()
        assert result.mean_log_prob == pytest.approx(want_lp, abs=ATOL)
        assert result.pseudo_perplexity is None


def test_pseudo_perplexity_equals_one_masked_copy_at_a_time(pair) -> None:
    ours, ref, tokenizer = pair
    sequences = ["MKVLAGWY", "A", "QQRSTX", "MKVLAGWYHHE"]
    results = Embedder(ours, tokenizer, lm_score="pseudo", max_tokens=40).embed(sequences)
    for seq, result in zip(sequences, results, strict=True):
        total = 0.0
        for i in range(len(seq)):
            _, logp, ids = _ref_forward(ref, tokenizer, seq, mask_at=i)
            true = tokenizer(" ".join(seq))["input_ids"][i + 1]
            total += float(logp[i + 1, true])
        assert result.pseudo_perplexity == pytest.approx(math.exp(-total / len(seq)), rel=1e-5)
        want_lp = _ref_log_probs(ref, tokenizer, seq).mean()
        assert result.mean_log_prob == pytest.approx(want_lp, abs=ATOL)


def test_alone_equals_inside_a_batch_and_padded_forward(pair) -> None:
    """Padding never changes a result: each sequence alone = inside any batch = the
    reference's padded batch at the real tokens."""
    ours, ref, tokenizer = pair
    sequences = _sequences(9, seed=2)
    embedder = Embedder(ours, tokenizer, include=["per_residue"], lm_score="unmasked",
                        max_tokens=10_000)  # fmt: skip
    together = embedder.embed(sequences)
    encoded = tokenizer([" ".join(s) for s in sequences], padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = ref(**encoded, output_hidden_states=True).hidden_states[-1]
    for i, seq in enumerate(sequences):
        (alone,) = embedder.embed([seq])
        np.testing.assert_allclose(together[i].embedding, alone.embedding, atol=1e-6)
        np.testing.assert_array_equal(together[i].per_residue, alone.per_residue)
        assert together[i].mean_log_prob == pytest.approx(alone.mean_log_prob, abs=1e-6)
        want = padded[i, 1 : len(seq) + 1].numpy()
        np.testing.assert_allclose(together[i].embedding, want.mean(0), atol=ATOL)


def test_windows(pair) -> None:
    """Longer than the window: overlapping windows, per-residue values averaged where
    windows overlap, pooled over the merged residues; what fits is not windowed."""
    ours, ref, tokenizer = pair
    window = 12
    short, long = "MKVLAGWYHHEQ", "MKVLAGWYHHEQRSTPACDEFGHIKLNPQRSTVW"
    plain = Embedder(ours, tokenizer, include=["bos", "per_residue"], lm_score="pseudo")
    windowed = Embedder(ours, tokenizer, include=["bos", "per_residue"], lm_score="pseudo",
                        window=window, max_tokens=50)  # fmt: skip
    a, b = plain.embed([short])[0], windowed.embed([short])[0]
    assert not a.windowed and not b.windowed
    np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    assert a.pseudo_perplexity == pytest.approx(b.pseudo_perplexity, rel=1e-6)

    (result,) = windowed.embed([long])
    assert result.status == "ok" and result.windowed
    bounds = window_bounds(len(long), window)
    assert len(bounds) == 4 and bounds[0][0] == 0 and bounds[-1][1] == len(long)
    for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False):
        assert end - start >= window // 4
    n_layers = ours.config.num_hidden_layers
    merged = np.zeros((len(long), ours.config.hidden_size))
    log_probs = np.zeros(len(long))
    masked = np.zeros(len(long))
    cover = np.zeros(len(long))
    bos = []
    for start, end in bounds:
        piece = long[start:end]
        hidden, _, _ = _ref_forward(ref, tokenizer, piece)
        merged[start:end] += hidden[n_layers][0, 1:-1].numpy()
        bos.append(hidden[n_layers][0, 0].numpy())
        log_probs[start:end] += _ref_log_probs(ref, tokenizer, piece)
        for i in range(len(piece)):
            _, logp, ids = _ref_forward(ref, tokenizer, piece, mask_at=i)
            masked[start + i] += float(logp[i + 1, tokenizer(" ".join(piece))["input_ids"][i + 1]])
        cover[start:end] += 1
    merged /= cover[:, None]
    for value in (result.embedding, result.bos, result.per_residue, result.mean_log_prob):
        assert np.isfinite(value).all()
    np.testing.assert_allclose(result.embedding, merged.mean(0), atol=ATOL)
    _assert_float16_close(result.per_residue, merged.astype(np.float32))
    np.testing.assert_allclose(result.bos, np.mean(bos, axis=0), atol=ATOL)
    assert result.mean_log_prob == pytest.approx((log_probs / cover).mean(), abs=ATOL)
    want_ppl = math.exp(-(masked / cover).mean())
    assert result.pseudo_perplexity == pytest.approx(want_ppl, rel=1e-5)


def test_window_bounds() -> None:
    assert window_bounds(5, 10) == [(0, 5)]
    assert window_bounds(10, 10) == [(0, 10)]
    for length in (11, 23, 100, 1023, 5000):
        bounds = window_bounds(length, 10 if length < 1000 else 1022)
        size = bounds[0][1] - bounds[0][0]
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(e - s == size for s, e in bounds)
        assert all(e2 > s2 and e1 - s2 >= size // 4
                   for (s1, e1), (s2, e2) in zip(bounds, bounds[1:], strict=False))  # fmt: skip


def test_forward_stops_at_the_deepest_requested_layer(pair, monkeypatch) -> None:
    ours, ref, tokenizer = pair
    last = ours.esm.encoder.layer[-1]

    def boom(*args, **kwargs):
        raise AssertionError("the last layer ran")

    monkeypatch.setattr(last, "forward_packed", boom)
    (result,) = Embedder(ours, tokenizer, layers=[1, 0]).embed(["MKVLAG"])
    hidden, _, _ = _ref_forward(ref, tokenizer, "MKVLAG")
    np.testing.assert_allclose(result.embedding, hidden[1][0, 1:-1].numpy().mean(0), atol=ATOL)
    with pytest.raises(AssertionError, match="the last layer ran"):
        Embedder(ours, tokenizer, layers=[1], lm_score="unmasked").embed(["MKVLAG"])


def test_resolve_layers() -> None:
    assert resolve_layers([-1], 6) == (6,)
    assert resolve_layers([-1, 20, 6, -7], 33) == (33, 20, 6, 27)
    assert resolve_layers([-1, 6, 0], 6) == (6, 0)  # -1 and 6 are the same hidden state
    assert resolve_layers([-7], 6) == (0,)
    for bad in ([7], [-8], []):
        with pytest.raises(ValueError, match="--layers"):
            resolve_layers(bad, 6)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_esm2: Path) -> tuple[EsmModel, EsmTokenizer]:
    model = EsmModel.from_pretrained(tiny_esm2, add_pooling_layer=False).eval()
    return model, EsmTokenizer.from_pretrained(tiny_esm2)


def test_every_residue_is_one_token(model_and_tokenizer) -> None:
    """J is not in ESM-2's vocabulary: "MJJK" embeds like M <unk> <unk> K, not M <unk> K."""
    model, tokenizer = model_and_tokenizer
    (result,) = Embedder(model, tokenizer).embed(["MJJK"])
    ids = tokenizer("M <unk> <unk> K", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 6
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state[0, 1:-1].mean(dim=0).numpy()
    np.testing.assert_allclose(result.embedding, want, atol=ATOL)


def test_packed_tokens_equal_the_tokenizer(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    sequences = ["MKV", "ACDEFGHIKLMNPQRSTVWYXBUZOJ", "a", "\u00e9-.*", ""]
    ids, lengths = tokenizer.encode_packed(sequences)
    assert lengths == [len(s) + 2 for s in sequences]
    assert ids.tolist() == sum((tokenizer(" ".join(s))["input_ids"] for s in sequences), [])


def test_too_long_and_options(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    results = Embedder(model, tokenizer, max_length=10).embed(["A" * 10, "A" * 11])
    assert [r.status for r in results] == ["ok", "too_long"]
    assert results[1].embedding is None
    with pytest.raises(ValueError, match="language-model head"):
        Embedder(model, tokenizer, lm_score="pseudo")
    with pytest.raises(ValueError, match="--include"):
        Embedder(model, tokenizer, include=["cls"])


def test_oom_splits_batches(model_and_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = model_and_tokenizer
    poisoned = "M" * 45  # the only sequence of its length: it runs out of memory even alone
    sequences = [*_sequences(8, seed=3), poisoned]
    expected = Embedder(model, tokenizer).embed(sequences)
    embedder = Embedder(model, tokenizer, max_tokens=10_000)
    real_forward = model.forward_packed
    batch_sizes: list[int] = []

    def forward(input_ids, lengths, keep):
        batch_sizes.append(len(lengths))
        alone = len(lengths) == 1 and lengths[0] == len(poisoned) + 2
        if len(lengths) > 1 or alone:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(input_ids, lengths, keep)

    monkeypatch.setattr(model, "forward_packed", forward)
    results = embedder.embed(sequences)
    assert batch_sizes[0] == 9 and 1 in batch_sizes
    for seq, got, want in zip(sequences, results, expected, strict=True):
        if seq == poisoned:
            assert got.status == "out_of_memory" and got.embedding is None
        else:
            assert got.status == "ok"
            np.testing.assert_allclose(got.embedding, want.embedding, atol=ATOL)


def test_default_window(model_and_tokenizer) -> None:
    model, _ = model_and_tokenizer
    assert default_window(model.config) == 1022  # rotary: the training crop


def test_absolute_positions_window_is_the_position_table() -> None:
    from esmpipe.models import EsmConfig
    from esmpipe.models.config import ESM2_VOCAB

    config = EsmConfig(vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=16,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       max_position_embeddings=40, position_embedding_type="absolute",
                       emb_layer_norm_before=True)  # fmt: skip
    model = EsmModel(config, add_pooling_layer=False).eval()
    tokenizer = EsmTokenizer(vocab=list(ESM2_VOCAB))
    embedder = Embedder(model, tokenizer)
    assert embedder.window == 36  # 40 rows, positions start at pad + 1 = 2, minus BOS/EOS
    results = embedder.embed(["A" * 36, "A" * 37, "A" * 200])
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert [r.windowed for r in results] == [False, True, True]
    assert all(np.isfinite(r.embedding).all() for r in results)
    with pytest.raises(ValueError, match="at most 36"):
        Embedder(model, tokenizer, window=37)


def test_free_heap_pages_go_back_after_each_cpu_batch(model_and_tokenizer, monkeypatch) -> None:
    import sys

    import esmpipe.engine.embed as engine
    from esmpipe.engine import device

    if sys.platform.startswith("linux"):
        assert device.release_free_memory()  # glibc has malloc_trim
    model, tokenizer = model_and_tokenizer
    calls: list[int] = []
    monkeypatch.setattr(engine, "release_free_memory", lambda: calls.append(1) or True)
    sequences = _sequences(12, seed=5)
    embedder = Embedder(model, tokenizer, max_tokens=60)
    batches = sum(1 for _ in embedder.run(sequences))
    assert batches > 1 and len(calls) >= batches
