"""The cache key: every part of it forces recomputation, batch knobs do not.

Parts of the key: the model's identity (a folder's weights; the commit a hub
revision resolves to, in a fake local Hugging Face cache with two commits), the
precision that runs, the value-changing settings, the engine's output version.
A workflow run on a one-sample cohort shows it end to end; the hub cases run the
commands the rules run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import esmpipe.engine.embed
from esmpipe.cli import main as esmpipe_main
from esmpipe.commands.init_model import init_model
from esmpipe.io.tables import read_metadata
from esmpipe.pipeline import identity
from esmpipe.pipeline.plan import plan_stage

from .runner import REPO, local_run_args, snakemake

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESMPIPE_CACHE_HOME", str(tmp_path / "esmpipe-cache"))


def fake_hub(root: Path, repo: str = "org/tiny") -> Path:
    """A Hugging Face cache holding two commits of `repo`, `main` pointing at A."""
    folder = root / f"models--{repo.replace('/', '--')}"
    for seed, commit in enumerate((COMMIT_A, COMMIT_B)):
        init_model("tiny-esm2", folder / "snapshots" / commit, seed=seed)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT_A)
    return folder


def key_of(capsys, *args: str) -> dict:
    assert esmpipe_main(["cache-key", *args]) == 0
    return json.loads(capsys.readouterr().out)


# --- the parts of the key ----------------------------------------------------------------


def test_folder_identity_follows_the_weights(tmp_path):
    model = init_model("tiny-esm2", tmp_path / "m", seed=0)
    first = identity.model_identity(model)
    assert first.startswith("sha256:") and identity.model_identity(model) == first
    init_model("tiny-esm2", model, seed=1, force=True)
    assert identity.model_identity(model) != first
    # A copy of the same weights under another name is the same model.
    init_model("tiny-esm2", model, seed=0, force=True)
    shutil.copytree(model, tmp_path / "copy")
    assert identity.model_identity(tmp_path / "copy") == first


def test_folder_digests_are_remembered_by_size_and_mtime(tmp_path):
    model = init_model("tiny-esm2", tmp_path / "m", seed=0)
    first = identity.model_identity(model)
    weights = model / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size: only the remembered mtime tells it apart
    weights.write_bytes(bytes(data))
    changed = identity.model_identity(model)
    assert changed != first
    # Same path, size and mtime: the remembered digest is used without reading the file.
    import os

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity.model_identity(model) == changed  # remembered under the new content
    cache = json.loads((tmp_path / "esmpipe-cache" / "file-digests.json").read_text())
    assert str(weights.resolve()) in cache


def test_hub_revision_resolves_to_its_commit_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = fake_hub(tmp_path / "hub")
    assert identity.model_identity("org/tiny", "main") == COMMIT_A
    assert identity.model_identity("org/tiny", COMMIT_B) == COMMIT_B
    (repo / "refs" / "main").write_text(COMMIT_B)  # the branch moved
    assert identity.model_identity("org/tiny", "main") == COMMIT_B
    with pytest.raises(identity.IdentityError, match="esmpipe fetch-model --model org/none"):
        identity.model_identity("org/none")


def test_precision_is_what_the_job_runs():
    rp = identity.resolve_precision
    assert rp("embed", "auto", "cpu") == "float32"
    assert rp("embed", "auto", "cuda", bf16=True) == "bfloat16"
    assert rp("embed", "auto", "cuda:1", bf16=False) == "float16"
    assert rp("embed", "auto", "auto", gpu=True, bf16=True) == "bfloat16"
    assert rp("embed", "auto", "auto", gpu=False) == "float32"
    assert rp("fold", "auto", "cuda") == "float16+float32"
    assert rp("fold", "auto", "cpu") == "float32"
    assert rp("fold", "bfloat16", "cpu") == "bfloat16"
    assert identity.normalize_dtype("float16 stem, float32 trunk") == "float16+float32"


def test_every_part_of_the_key_changes_it(monkeypatch):
    base = dict(model_identity="sha256:x", dtype="float32", output_version=1,
                settings={"layers": [-1], "include": ["mean"]})  # fmt: skip
    key = identity.cache_key("embed", **base)["key"]
    changed = [
        {"model_identity": "sha256:y"},
        {"dtype": "bfloat16"},
        {"output_version": 2},
        {"settings": {"layers": [-1, 3]}},
        {"settings": {"include": ["mean", "bos"]}},
        {"settings": {"lm_score": "pseudo"}},
    ]
    for change in changed:
        assert identity.cache_key("embed", **{**base, **change})["key"] != key, change
    # Defaults spelled out or left out, lists in any order: the same key.
    same = identity.cache_key("embed", **{**base, "settings": {"include": "mean", "layers": "-1",
                                                               "lm_score": "none"}})  # fmt: skip
    assert same["key"] == key
    record = identity.cache_key("embed", **base)
    assert record["cache_dir"] == f"results/cache/embed/{key}"
    assert record["expect"] == {"model_identity": "sha256:x", "dtype": "float32",
                                "output_version": 1}  # fmt: skip
    # Batch knobs are not part of it.
    with pytest.raises(ValueError, match="max_tokens"):
        identity.value_settings("embed", {"max_tokens": 1024})


def test_output_version_comes_from_the_engine(monkeypatch, capsys, tmp_path):
    model = init_model("tiny-esm2", tmp_path / "m")
    args = ["--stage", "embed", "--model", str(model), "--device", "cpu"]
    before = key_of(capsys, *args)
    monkeypatch.setattr(esmpipe.engine.embed, "OUTPUT_VERSION", before["output_version"] + 1)
    after = key_of(capsys, *args)
    assert after["output_version"] == before["output_version"] + 1
    assert after["cache_dir"] != before["cache_dir"]


# --- a hub model through the commands the rules run -----------------------------------------


def ingest_table(tmp_path: Path) -> Path:
    fasta = tmp_path / "s.faa"
    fasta.write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQ\n>p2\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    out = tmp_path / "work" / "s.parquet"
    assert esmpipe_main(["ingest", "--sample", "s", "--type", "protein", "--input", str(fasta),
                         "--output", str(out)]) == 0  # fmt: skip
    return out


def plan(ingest: Path, key: dict, out: Path) -> dict:
    return plan_stage([ingest], stage="embed", settings=key, cache_dir=out.parent / key[
        "cache_dir"], output_dir=out, shard_size=100, cost_exponent=1, max_length=None)  # fmt: skip


def test_a_moved_revision_recomputes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = fake_hub(tmp_path / "hub")
    ingest = ingest_table(tmp_path)

    record = tmp_path / "work" / "model.json"
    assert esmpipe_main(["fetch-model", "--model", "org/tiny", "--output", str(record)]) == 0
    assert json.loads(record.read_text())["model_identity"] == COMMIT_A
    key = key_of(capsys, "--stage", "embed", "--identity", str(record), "--device", "cpu")
    manifest = plan(ingest, key, tmp_path / "plan")
    assert manifest["counts"]["planned"] == 2
    (shard,) = manifest["shards"]
    part = tmp_path / key["cache_dir"] / f"{shard['shard_id']}.parquet"
    assert esmpipe_main(["embed", "--model", "org/tiny", "--input",
                         str(tmp_path / "plan" / "shards" / f"{shard['shard_id']}.parquet"),
                         "--output", str(part), "--device", "cpu"]) == 0  # fmt: skip
    meta = read_metadata(part)
    # The part records the commit that ran, the precision and the engine version.
    assert meta["model_identity"] == COMMIT_A
    assert {k: meta[k] for k in key["expect"]} == key["expect"]
    assert plan(ingest, key, tmp_path / "plan")["counts"] == {"cached": 2, "planned": 0,
                                                              "too_long": 0}  # fmt: skip

    (repo / "refs" / "main").write_text(COMMIT_B)  # main moved; fetched again
    assert esmpipe_main(["fetch-model", "--model", "org/tiny", "--output", str(record)]) == 0
    moved = key_of(capsys, "--stage", "embed", "--identity", str(record), "--device", "cpu")
    assert moved["model_identity"] == COMMIT_B and moved["cache_dir"] != key["cache_dir"]
    assert plan(ingest, moved, tmp_path / "plan")["counts"]["planned"] == 2
    # And a CPU float32 key never shares parts with a GPU run of the same commit.
    gpu = key_of(capsys, "--stage", "embed", "--identity", str(record), "--device", "cuda",
                 "--bf16", "no")  # fmt: skip
    assert gpu["dtype"] == "float16" and gpu["cache_dir"] != moved["cache_dir"]


# --- the workflow ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, demo_env):
    """An embed-only run of one sample with a model folder the test may change."""
    workdir = tmp_path_factory.mktemp("cachekey")
    shutil.copytree(REPO / "config" / "demo", workdir / "config" / "demo")
    (workdir / "config" / "samples.tsv").write_text(
        "sample\tpath\ttype\nsample_a\tdemo/sample_a.faa\tprotein\n")
    init_model("tiny-esm2", workdir / "models" / "esm", seed=0)
    write_config(workdir)
    env = {**demo_env, "ESMPIPE_CACHE_HOME": str(workdir / ".esmpipe-cache")}
    snakemake(workdir, *local_run_args("config/run.yaml"), env=env)
    return workdir, env


def write_config(workdir: Path, **embed) -> None:
    config = {
        "samples": "config/samples.tsv",
        "embed": {"model": "models/esm", "device": "cpu", "dtype": "float32",
                  "max_tokens": 4096, "shard_size": 50, "threads": 1, **embed},
        "fold": False,
    }  # fmt: skip
    (workdir / "config" / "run.yaml").write_text(json.dumps(config))


def embed_jobs(result) -> int:
    """Embed jobs run (they follow the plan checkpoint, so the first job table lacks them)."""
    return len(re.findall(r"^(?:local)?rule embed:$", result.stdout + result.stderr, re.M))


def cache_dirs(workdir: Path) -> set[str]:
    return {p.name for p in (workdir / "results" / "cache" / "embed").iterdir()}


def test_workflow_recomputes_on_weights_and_precision_not_on_batch_size(small_run):
    workdir, env = small_run
    args = local_run_args("config/run.yaml")
    first = cache_dirs(workdir)
    embeddings = pq.read_table(sorted((workdir / "results" / "embeddings").glob("*.parquet"))[0])

    # A batch knob: nothing to compute.
    write_config(workdir, max_tokens=512)
    result = snakemake(workdir, *args, env=env)
    assert embed_jobs(result) == 0 and cache_dirs(workdir) == first

    # New weights in the same folder: everything again, in a new cache folder.
    init_model("tiny-esm2", workdir / "models" / "esm", seed=1, force=True)
    result = snakemake(workdir, *args, env=env)
    assert embed_jobs(result) >= 1
    second = cache_dirs(workdir)
    assert len(second) == 2 and first < second
    changed = pq.read_table(sorted((workdir / "results" / "embeddings").glob("*.parquet"))[0])
    assert changed.sort_by("seq_hash")["embedding"] != embeddings.sort_by("seq_hash")["embedding"]
    # Another precision: computed again.
    write_config(workdir, dtype="bfloat16")
    result = snakemake(workdir, *args, env=env)
    assert embed_jobs(result) >= 1 and len(cache_dirs(workdir)) == 3
    key = json.loads((workdir / "work" / "keys" / "embed.json").read_text())
    part = next((workdir / key["cache_dir"]).glob("*.parquet"))
    assert read_metadata(part)["dtype"] == "bfloat16" == key["dtype"]
