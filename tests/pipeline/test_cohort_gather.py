"""Cohort-scale gathering: expect-matched cache hits, partial tables, incremental writes,
the contigs table."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.io.tables import read_metadata, write_parquet_atomic
from esmpipe.pipeline.gather import (
    GatherError,
    gather_contigs,
    gather_proteins,
    gather_stage,
    table_parts,
)
from esmpipe.pipeline.plan import plan_stage

from .conftest import fake_compute, protein, write_ingest

SETTINGS = {"stage": "embed", "model": "m1"}


def plan(cohort, settings=SETTINGS, shard_size=1.0):
    root = cohort["root"]
    return plan_stage(cohort["ingest"], stage="embed", settings=settings,
                      cache_dir=root / "cache", output_dir=root / "plan",
                      shard_size=shard_size, cost_exponent=1, max_length=None)


def compute(cohort, manifest, metadata=None, skip=()):
    root = cohort["root"]
    for shard in manifest["shards"]:
        if shard["shard_id"] in skip:
            continue
        out = fake_compute("embed", root / "plan" / "shards" / f"{shard['shard_id']}.parquet",
                           root / "cache" / f"{shard['shard_id']}.parquet")
        if metadata:
            write_parquet_atomic(pq.read_table(out), out, metadata)


def gather(cohort, folder="embeddings", **kwargs):
    root = cohort["root"]
    return gather_stage(root / "plan", root / "results" / folder,
                        root / "status" / f"{folder}.parquet", **kwargs)


def sorted_table(path):
    return ds.dataset(path).to_table().sort_by("seq_hash")


def test_expect_decides_cache_hits(cohort):
    first = plan(cohort)
    compute(cohort, first, {"model_identity": "sha256:aaa", "dtype": "float32",
                            "output_version": 1})
    match = {**SETTINGS, "expect": {"model_identity": "sha256:aaa", "dtype": "float32"}}
    again = plan(cohort, match)
    assert again["shards"] == [] and again["counts"]["cached"] == len(cohort["distinct"])
    # New weights (another identity) or another precision: nothing cached is a hit.
    for changed in ({"model_identity": "sha256:bbb"}, {"dtype": "float16"},
                    {"output_version": 2}):
        other = plan(cohort, {**SETTINGS, "expect": {**match["expect"], **changed}})
        assert other["counts"]["cached"] == 0
        assert other["counts"]["planned"] == len(cohort["distinct"])
        # The shards get other names than the stale parts, so they are computed again.
        assert not {f"{s['shard_id']}.parquet" for s in other["shards"]} & {
            f"{s['shard_id']}.parquet" for s in first["shards"]}


def test_gathered_files_carry_their_own_parts_metadata(cohort):
    first = plan(cohort)
    compute(cohort, first, {"dtype": "float32"})
    cohort["ingest"].append(write_ingest(cohort["root"] / "ingest" / "c.parquet", "c",
                                         [("c1", protein(cohort["rng"], 66), "ok")]))
    second = plan(cohort)
    compute(cohort, second, {"dtype": "bfloat16"})
    gather(cohort)
    parts = table_parts(cohort["root"] / "results" / "embeddings")
    assert len(parts) == len(first["shards"]) + 1
    assert sorted(p["dtype"] for p in parts).count("bfloat16") == 1
    new = f"{second['shards'][0]['shard_id']}.parquet"
    for file in (cohort["root"] / "results" / "embeddings").glob("*.parquet"):
        meta = read_metadata(file)
        assert [p["part"] for p in meta["parts"]] == [file.name.rsplit("-", 1)[0] + ".parquet"]
        assert meta["dtype"] == ("bfloat16" if meta["parts"][0]["part"] == new else "float32")


def test_partial_gather_marks_missing_shards_not_computed(cohort):
    manifest = plan(cohort)
    assert len(manifest["shards"]) > 1
    failed = manifest["shards"][0]["shard_id"]
    compute(cohort, manifest, skip={failed})
    with pytest.raises(GatherError, match="allow-missing"):
        gather(cohort)
    root = cohort["root"]
    counts = gather(cohort, allow_missing=True, log_pattern="logs/{stage}/{shard}.log")
    lost = set(pq.read_table(root / "plan" / "shards" / f"{failed}.parquet")["seq_hash"]
               .to_pylist())
    assert counts["not_computed"] == len(lost)
    status = pq.read_table(root / "status" / "embeddings.parquet").to_pylist()
    assert len(status) == len(cohort["distinct"])
    for row in status:
        if row["seq_hash"] in lost:
            assert row == {"seq_hash": row["seq_hash"], "status": "not_computed",
                           "log": f"logs/embed/{failed}.log"}
        else:
            assert row["status"] == "ok" and row["log"] is None
    emb = ds.dataset(root / "results" / "embeddings").to_table()
    assert set(emb["seq_hash"].to_pylist()) == cohort["distinct"] - lost
    gather_proteins(cohort["ingest"], {"embed": root / "status" / "embeddings.parquet"},
                    root / "results" / "proteins")
    prot = ds.dataset(root / "results" / "proteins").to_table().to_pylist()
    assert len(prot) == cohort["records"]
    for row in prot:
        if row["seq_hash"] in lost:
            assert row["status"] == "not_computed_for_embed"
            assert row["log"] == f"logs/embed/{failed}.log"
        else:
            assert row["log"] is None
    # Through the CLI, and a later run that computes the shard gives the full table.
    compute(cohort, {"shards": [{"shard_id": failed}]})
    assert main(["gather", "--table", "embeddings", "--plan", str(root / "plan"),
                 "--output", str(root / "results" / "embeddings"),
                 "--status-output", str(root / "status" / "embeddings.parquet"),
                 "--allow-missing", "--log-pattern", "logs/{stage}/{shard}.log"]) == 0
    assert set(ds.dataset(root / "results" / "embeddings").to_table()["seq_hash"]
               .to_pylist()) == cohort["distinct"]


def test_adding_a_sample_keeps_unchanged_files(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    folder = root / "results" / "embeddings"
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*.parquet")}
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c", [
        ("c1", protein(cohort["rng"], 70), "ok"), ("c2", protein(cohort["rng"], 45), "ok")]))
    second = plan(cohort)
    assert second["shards"]
    compute(cohort, second)
    gather(cohort)
    after = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*.parquet")}
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(after) > len(before)
    # The same table as a fresh gather, and one dataset for pyarrow and DuckDB.
    gather(cohort, folder="fresh")
    assert sorted_table(folder).equals(sorted_table(root / "results" / "fresh"))
    n = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()[0]
    assert n == len(cohort["distinct"]) + 2
    # A part recomputed since (another mtime) is written again, not linked.
    part = root / "cache" / f"{second['shards'][0]['shard_id']}.parquet"
    write_parquet_atomic(pq.read_table(part), part)
    gather(cohort)
    again = {f.name: f.stat().st_ino for f in folder.glob("*.parquet")}
    changed = {k for k in again if again[k] != after[k][0]}
    assert changed == {f"{second['shards'][0]['shard_id']}-00000.parquet"}


def test_an_earlier_gather_with_other_rows_is_not_reused(cohort):
    """A part that now serves fewer sequences (another cohort) is written again."""
    root = cohort["root"]
    compute(cohort, plan(cohort, shard_size=1e9))
    gather(cohort)
    cohort["ingest"] = cohort["ingest"][:1]
    plan(cohort, shard_size=1e9)
    gather(cohort)
    emb = ds.dataset(root / "results" / "embeddings").to_table()
    ingest_a = pq.read_table(cohort["ingest"][0])
    expected = {h for h, s in zip(ingest_a["seq_hash"].to_pylist(),
                                  ingest_a["status"].to_pylist(), strict=True) if s == "ok"}
    assert set(emb["seq_hash"].to_pylist()) == expected


def test_gather_contigs(tmp_path):
    ingest = []
    for sample, contigs in (("a", [("a_c1", 1200, 2, "ok"), ("a_c2", 300, 0, "no_genes")]),
                            ("b", None), ("c", [("c_c1", 900, 1, "ok")])):
        path = tmp_path / f"{sample}.parquet"
        ingest.append(path)
        if contigs is not None:
            table = pa.table({
                "sample": [sample] * len(contigs), "contig": [c[0] for c in contigs],
                "length": pa.array([c[1] for c in contigs], pa.int64()),
                "genes": pa.array([c[2] for c in contigs], pa.int32()),
                "status": [c[3] for c in contigs]})
            pq.write_table(table, tmp_path / f"{sample}.contigs.parquet")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in ingest))
    assert main(["gather", "--table", "contigs", "--ingest-list", str(listing),
                 "--output", str(tmp_path / "contigs")]) == 0
    rows = ds.dataset(tmp_path / "contigs").to_table().to_pylist()
    assert [(r["sample"], r["contig"], r["genes"], r["status"]) for r in rows] == [
        ("a", "a_c1", 2, "ok"), ("a", "a_c2", 0, "no_genes"), ("c", "c_c1", 1, "ok")]
    # Protein samples only: an empty table that still has the columns.
    assert gather_contigs(ingest[1:2], tmp_path / "none") == 0
    empty = ds.dataset(tmp_path / "none").to_table()
    assert empty.num_rows == 0 and "genes" in empty.column_names
    assert json.loads(pq.read_schema(next((tmp_path / "none").glob("*.parquet")))
                      .metadata[b"esmpipe"])["table"] == "contigs"
