"""Loading and saving: both directions with transformers, hub cache, bad checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from esmpipe.models import (
    EsmConfig,
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmModel,
    EsmTokenizer,
)
from esmpipe.models.config import ESM2_VOCAB

TOL = dict(atol=1e-5, rtol=1e-5)


def logits_of(model, ids, mask):
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    return (
        out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    )


@pytest.mark.parametrize("shape", ["esm2", "esm1b"])
def test_ours_saved_loads_in_reference(reference_checkpoint, make_batch, tmp_path, shape):
    mine = EsmForMaskedLM.from_pretrained(reference_checkpoint("EsmForMaskedLM", shape))
    mine.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "lm_head.decoder.weight" not in keys  # tied: written once
    assert "esm.embeddings.word_embeddings.weight" in keys
    assert ("esm.rotary_embeddings.inv_freq" in keys) == (shape == "esm2")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["EsmForMaskedLM"]
    ref, info = transformers.EsmForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask = make_batch(0)
    assert_close(logits_of(mine, ids, mask), logits_of(ref.eval(), ids, mask), **TOL)
    # and back into ours
    again = EsmForMaskedLM.from_pretrained(tmp_path)
    assert_close(logits_of(again, ids, mask), logits_of(mine, ids, mask), **TOL)


def test_base_and_headed_checkpoints_load_into_each_other(
    reference_checkpoint, make_batch, tmp_path, caplog
):
    ids, mask = make_batch(1)
    mlm_folder = reference_checkpoint("EsmForMaskedLM", "esm2")
    mlm = EsmForMaskedLM.from_pretrained(mlm_folder)
    # headed checkpoint -> base model: the LM head is dropped, the pooler is new
    with caplog.at_level(logging.INFO):
        base = EsmModel.from_pretrained(mlm_folder)
    assert "pooler.dense.weight" in caplog.text
    with torch.no_grad():
        want = mlm.esm(ids, attention_mask=mask).last_hidden_state
        assert_close(base(ids, attention_mask=mask).last_hidden_state, want, **TOL)
    # base checkpoint (no prefix) -> headed model: the stem loads, the new head is initialised
    base.save_pretrained(tmp_path)
    assert all(not k.startswith("esm.") for k in load_file(tmp_path / "model.safetensors"))
    mlm2 = EsmForMaskedLM.from_pretrained(tmp_path)
    assert mlm2.lm_head.decoder.weight is mlm2.esm.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert_close(mlm2.esm(ids, attention_mask=mask).last_hidden_state, want, **TOL)
    # fine-tuning start: MLM checkpoint -> sequence classifier (new head, LM head dropped)
    clf = EsmForSequenceClassification.from_pretrained(mlm_folder)
    assert clf(ids, attention_mask=mask).logits.shape == (ids.shape[0], 2)
    # config fields given to from_pretrained override the stored config, as in the reference
    clf3 = EsmForSequenceClassification.from_pretrained(
        mlm_folder, num_labels=3, problem_type="multi_label_classification"
    )
    assert clf3.config.num_labels == 3 and len(clf3.config.id2label) == 3
    out = clf3(ids, attention_mask=mask, labels=torch.ones(ids.shape[0], 3))
    assert out.logits.shape == (ids.shape[0], 3) and out.loss.ndim == 0


def test_legacy_checkpoint_layouts(reference_checkpoint, make_batch, tmp_path):
    """Per-layer rotary inv_freq (published ESM-2 files) and an ESMFold-style `esm.` stem."""
    folder = reference_checkpoint("EsmModel", "esm2")
    state = EsmModel.from_pretrained(folder).state_dict()
    inv_freq = state.pop("rotary_embeddings.inv_freq")
    legacy = {f"esm.{k}": v for k, v in state.items()}
    for i in range(2):
        legacy[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.half()
    legacy["trunk.blocks.0.weight"] = torch.zeros(3)  # a folding head's tensor
    legacy["esm_s_combine"] = torch.zeros(3)
    save_file(legacy, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    model = EsmModel.from_pretrained(tmp_path)
    assert model.rotary_embeddings.inv_freq.dtype == torch.float32
    assert_close(model.rotary_embeddings.inv_freq, inv_freq.half().float())
    ids, mask = make_batch(2)
    ref = EsmModel.from_pretrained(folder)
    with torch.no_grad():
        assert_close(
            model(ids, attention_mask=mask).last_hidden_state,
            ref(ids, attention_mask=mask).last_hidden_state,
            atol=1e-3,
            rtol=1e-3,
        )


def test_dtype_and_device(reference_checkpoint, tmp_path, make_batch):
    folder = reference_checkpoint("EsmForMaskedLM", "esm2")
    half = EsmForMaskedLM.from_pretrained(folder, dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    assert half.esm.embeddings.position_ids.dtype == torch.long
    assert half.lm_head.decoder.weight is half.esm.embeddings.word_embeddings.weight
    ids, mask = make_batch(3)
    assert half(ids, attention_mask=mask).logits.dtype == torch.bfloat16
    assert EsmForMaskedLM.from_pretrained(folder, dtype="auto").dtype == torch.float32
    assert EsmForMaskedLM.from_pretrained(folder, dtype="float16").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        EsmForMaskedLM.from_pretrained(folder, dtype="float13")


def test_sharded_safetensors(reference_checkpoint, make_batch, tmp_path):
    folder = reference_checkpoint("EsmForMaskedLM", "esm1b")
    state = load_file(folder / "model.safetensors")
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    ids, mask = make_batch(4)
    assert_close(
        logits_of(EsmForMaskedLM.from_pretrained(tmp_path), ids, mask),
        logits_of(EsmForMaskedLM.from_pretrained(folder), ids, mask),
    )


# -- the hub cache -------------------------------------------------------------------


def fake_hub_cache(root, repo_id, files_by_revision):
    """Lay out `root` as huggingface_hub's cache: blobs are plain copies, refs name commits."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    for i, (revision, files) in enumerate(files_by_revision.items()):
        commit = f"{i + 1:040x}"
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, source in files.items():
            (snapshot / name).write_bytes(source.read_bytes())
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return repo_dir


def test_offline_hub_cache_by_id_and_revision(
    reference_checkpoint, make_batch, tmp_path, monkeypatch
):
    folder = reference_checkpoint("EsmForMaskedLM", "esm2")
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save(load_file(folder / "model.safetensors"), bin_path)
    cache = tmp_path / "cache"
    fake_hub_cache(
        cache,
        "org/tiny-esm",
        {
            "main": {"config.json": folder / "config.json", "pytorch_model.bin": bin_path},
            "refs/pr/4": {
                "config.json": folder / "config.json",
                "model.safetensors": folder / "model.safetensors",
            },
        },
    )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(ESM2_VOCAB))
    fake_hub_cache(cache, "org/plain", {
        "main": {"config.json": folder / "config.json", "vocab.txt": vocab,
                 "model.safetensors": folder / "model.safetensors"},
    })  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ids, mask = make_batch(5)
    want = logits_of(EsmForMaskedLM.from_pretrained(folder), ids, mask)

    # a plain hub id resolves to the cached main snapshot
    assert_close(logits_of(EsmForMaskedLM.from_pretrained("org/plain"), ids, mask), want, **TOL)
    assert EsmTokenizer.from_pretrained("org/plain")("MK<mask>")["input_ids"] == [0, 20, 15, 32, 2]

    # main has only a pickle: refused by default, with the way out in the message
    with pytest.raises(ValueError, match=r"allow_pickle.*|revision") as err:
        EsmForMaskedLM.from_pretrained("org/tiny-esm")
    assert "allow_pickle" in str(err.value) and "revision" in str(err.value)
    assert "refs/pr/4" in str(err.value)
    # the conversion revision has safetensors
    by_revision = EsmForMaskedLM.from_pretrained("org/tiny-esm", revision="refs/pr/4")
    assert_close(logits_of(by_revision, ids, mask), want, **TOL)
    # the pickle, when explicitly allowed
    pickled = EsmForMaskedLM.from_pretrained("org/tiny-esm", allow_pickle=True)
    assert_close(logits_of(pickled, ids, mask), want, **TOL)
    # explicit cache_dir and local_files_only, without the environment
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    explicit = EsmForMaskedLM.from_pretrained(
        "org/tiny-esm", revision="refs/pr/4", cache_dir=cache, local_files_only=True
    )
    assert_close(logits_of(explicit, ids, mask), want, **TOL)
    assert (
        EsmConfig.from_pretrained(
            "org/tiny-esm", cache_dir=cache, local_files_only=True
        ).hidden_size
        == 32
    )


# -- bad checkpoints -----------------------------------------------------------------


@pytest.fixture
def good_folder(reference_checkpoint, tmp_path):
    folder = reference_checkpoint("EsmForMaskedLM", "esm1b")
    out = tmp_path / "ckpt"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        (out / name).write_bytes((folder / name).read_bytes())
    return out


def test_missing_files(good_folder, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        EsmForMaskedLM.from_pretrained(tmp_path / "does-not-exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="offline"):
        EsmForMaskedLM.from_pretrained("org/not-cached")
    (good_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights found"):
        EsmForMaskedLM.from_pretrained(good_folder)
    (good_folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        EsmForMaskedLM.from_pretrained(good_folder)


def test_unreachable_hub_is_named(reference_checkpoint, tmp_path, monkeypatch):
    """Online without a network, an uncached repo is reported as unreachable, not as missing
    files; a repo with cached files still falls back to the cache."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []
    real_download = huggingface_hub.hf_hub_download

    def unreachable(repo_id, filename, **kwargs):
        # What huggingface_hub does online when the hub cannot be reached: the cached
        # file if there is one, else LocalEntryNotFoundError.
        calls.append(filename)
        try:
            return real_download(repo_id, filename, **{**kwargs, "local_files_only": True})
        except LocalEntryNotFoundError:
            raise LocalEntryNotFoundError("cannot reach the hub and not cached") from None

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(OSError, match="could not be reached") as err:
        EsmForMaskedLM.from_pretrained("org/not-cached")
    assert "org/not-cached" in str(err.value) and str(cache) in str(err.value)
    assert calls == ["config.json"]
    with pytest.raises(OSError, match="could not be reached"):
        EsmTokenizer.from_pretrained("org/not-cached")

    folder = reference_checkpoint("EsmForMaskedLM", "esm2")
    fake_hub_cache(cache, "org/cached", {
        "main": {"config.json": folder / "config.json",
                 "model.safetensors": folder / "model.safetensors"},
    })  # fmt: skip
    model = EsmForMaskedLM.from_pretrained("org/cached")
    assert model.config.hidden_size == 32


@pytest.mark.parametrize(
    "fixture, class_name",
    [("tiny_esm2", "EsmForMaskedLM"), ("tiny_esmfold", "EsmForProteinFolding")],
)
def test_missing_tensors_are_initialised_not_left_empty(
    request, tmp_path, monkeypatch, fixture, class_name
):
    """strict=False: every tensor the checkpoint lacks gets the constructor's init, never
    uninitialised storage (made visible here by NaN-filled `torch.empty`)."""
    import esmpipe.models as models

    source = request.getfixturevalue(fixture)
    (tmp_path / "config.json").write_bytes((source / "config.json").read_bytes())
    save_file({}, str(tmp_path / "model.safetensors"))
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    model = getattr(models, class_name).from_pretrained(tmp_path, strict=False)
    monkeypatch.undo()
    bad = [
        n for n, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    assert bad == []
    # Bare parameters get the value the constructor gives them (zeros).
    if class_name == "EsmForProteinFolding":
        assert torch.all(model.esm_s_combine == 0)
        assert torch.all(model.trunk.structure_module.ipa.head_weights == 0)


def test_wrong_shapes_are_named(good_folder):
    config = json.loads((good_folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (good_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight"):
        EsmForMaskedLM.from_pretrained(good_folder)


def test_missing_and_unexpected_keys_are_named(good_folder):
    state = load_file(good_folder / "model.safetensors")
    del state["esm.encoder.layer.1.output.dense.bias"]
    state["esm.encoder.layer.1.surprise"] = torch.zeros(2)
    save_file(state, good_folder / "model.safetensors")
    with pytest.raises(ValueError) as err:
        EsmForMaskedLM.from_pretrained(good_folder)
    assert "esm.encoder.layer.1.output.dense.bias" in str(err.value)
    assert "esm.encoder.layer.1.surprise" in str(err.value)
    model = EsmForMaskedLM.from_pretrained(good_folder, strict=False)
    assert model.esm.encoder.layer[1].output.dense.bias.device.type == "cpu"


def test_wrong_model_type(good_folder):
    config = json.loads((good_folder / "config.json").read_text())
    config["model_type"] = "bert"
    (good_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="bert"):
        EsmForMaskedLM.from_pretrained(good_folder)


def test_corrupt_safetensors(good_folder):
    path = good_folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        EsmForMaskedLM.from_pretrained(good_folder)


def test_sharded_pickle_and_missing_shard(good_folder, make_batch):
    ids, mask = make_batch(7)
    want = logits_of(EsmForMaskedLM.from_pretrained(good_folder), ids, mask)
    state = load_file(good_folder / "model.safetensors")
    (good_folder / "model.safetensors").unlink()
    names = sorted(state)
    weight_map = {}
    for i, keys in enumerate((names[:10], names[10:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in keys}, good_folder / shard)
        weight_map.update({k: shard for k in keys})
    index = good_folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="allow_pickle"):
        EsmForMaskedLM.from_pretrained(good_folder)
    model = EsmForMaskedLM.from_pretrained(good_folder, allow_pickle=True)
    assert_close(logits_of(model, ids, mask), want, **TOL)
    (good_folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        EsmForMaskedLM.from_pretrained(good_folder, allow_pickle=True)


def test_pickle_only_folder(good_folder, make_batch):
    ids, mask = make_batch(6)
    want = logits_of(EsmForMaskedLM.from_pretrained(good_folder), ids, mask)
    torch.save(load_file(good_folder / "model.safetensors"), good_folder / "pytorch_model.bin")
    (good_folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="allow_pickle"):
        EsmForMaskedLM.from_pretrained(good_folder)
    model = EsmForMaskedLM.from_pretrained(good_folder, allow_pickle=True)
    assert_close(logits_of(model, ids, mask), want, **TOL)
