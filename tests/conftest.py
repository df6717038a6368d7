"""Shared fixtures: tiny ESM vocabularies, reference (transformers) checkpoints, and
tiny random checkpoints built by `esmpipe init-model` (for the engine and CLI tests).

`transformers` is only the test oracle; fixtures that need it import it lazily so
test modules that do not compare against it never import it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esmpipe.models.config import ESM2_VOCAB

# Tiny shapes of the two ESM flavours (and ESM-1b with token dropout).
TINY_SHAPES = {
    "esm2": dict(position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=True),
    "esm1b": dict(
        position_embedding_type="absolute", emb_layer_norm_before=True, token_dropout=False
    ),
    "esm1b_td": dict(
        position_embedding_type="absolute", emb_layer_norm_before=True, token_dropout=True
    ),
}


def tiny_config_dict(shape: str = "esm2", **overrides) -> dict:
    """A config.json dict of a 2-layer, 32-wide model with the 33-token ESM-2 vocabulary."""
    base = dict(
        vocab_size=len(ESM2_VOCAB),
        mask_token_id=ESM2_VOCAB.index("<mask>"),
        pad_token_id=ESM2_VOCAB.index("<pad>"),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.update(TINY_SHAPES[shape])
    base.update(overrides)
    return base


@pytest.fixture(scope="session")
def esm2_vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(ESM2_VOCAB))
    return path


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Replace every parameter with noise, so zero biases and unit norms cannot hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def make_reference_checkpoint(
    folder: Path, class_name: str, shape: str, seed: int = 0, **config_overrides
) -> Path:
    """Save a random `transformers.<class_name>` (eager attention) into `folder`."""
    import transformers

    config = transformers.EsmConfig(**tiny_config_dict(shape, **config_overrides))
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    randomize_(model, seed)
    model.save_pretrained(folder)
    return folder


def padded_batch(seed: int = 0, lengths=(12, 7, 3), with_mask_tokens: bool = True):
    """input_ids [B, L] (<cls> residues <eos> <pad>...) and attention_mask [B, L]."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), ESM2_VOCAB.index("<pad>"), dtype=torch.long)
    for row, n in enumerate(lengths):
        residues = torch.randint(4, 29, (n,), generator=generator)
        if with_mask_tokens and n > 2:
            residues[torch.randint(0, n, (max(1, n // 4),), generator=generator)] = (
                ESM2_VOCAB.index("<mask>")
            )
        ids[row, 0] = ESM2_VOCAB.index("<cls>")
        ids[row, 1 : n + 1] = residues
        ids[row, n + 1] = ESM2_VOCAB.index("<eos>")
    return ids, (ids != ESM2_VOCAB.index("<pad>")).long()


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """Factory: (class_name, shape, **overrides) -> folder of a cached random checkpoint."""
    cache: dict = {}

    def make(class_name: str, shape: str = "esm2", **overrides) -> Path:
        key = (class_name, shape, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"ref-{class_name}-{shape}")
            cache[key] = make_reference_checkpoint(
                folder, class_name, shape, seed=len(cache), **overrides
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: (shape, **overrides) -> a tiny config.json dict."""
    return tiny_config_dict


@pytest.fixture(scope="session")
def make_batch():
    """Factory: (seed, lengths, with_mask_tokens) -> (input_ids, attention_mask)."""
    return padded_batch


def _init_model(tmp_path_factory: pytest.TempPathFactory, preset: str) -> Path:
    from esmpipe.cli import main

    folder = tmp_path_factory.mktemp(preset)
    assert main(["init-model", "--preset", preset, "--output", str(folder)]) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_esm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ESM-2-like checkpoint folder (`esmpipe init-model --preset tiny-esm2`)."""
    return _init_model(tmp_path_factory, "tiny-esm2")


@pytest.fixture(scope="session")
def tiny_esmfold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ESMFold-like checkpoint folder (`esmpipe init-model --preset tiny-esmfold`)."""
    return _init_model(tmp_path_factory, "tiny-esmfold")
