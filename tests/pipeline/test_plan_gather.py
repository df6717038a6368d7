import json

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline.gather import GatherError, gather_proteins, gather_stage, overall_status
from esmpipe.pipeline.plan import plan_stage, read_manifest

from .conftest import digest, fake_compute, protein, write_ingest

SETTINGS = {"embed": {"stage": "embed", "model": "m1"}, "fold": {"stage": "fold", "model": "f1"}}


def run_stage(cohort, stage, *, max_length=None, fail=None, settings=None):
    """Plan, fake-compute every new shard into the cache, gather. Returns the manifest."""
    root = cohort["root"]
    cache = root / "cache" / stage
    plan_dir = root / "plan" / stage
    manifest = plan_stage(
        cohort["ingest"], stage=stage, settings=settings or SETTINGS[stage], cache_dir=cache,
        output_dir=plan_dir, shard_size=1.0, cost_exponent=1 if stage == "embed" else 3,
        max_length=max_length,
    )
    for shard in manifest["shards"]:
        fake_compute(stage, plan_dir / "shards" / f"{shard['shard_id']}.parquet",
                     cache / f"{shard['shard_id']}.parquet", fail=fail)
    table = "embeddings" if stage == "embed" else "structures"
    gather_stage(plan_dir, root / "results" / table, root / "status" / f"{stage}.parquet")
    return manifest


def test_plan_deduplicates_and_skips_too_long(cohort):
    manifest = run_stage(cohort, "fold", max_length=200)
    plan_dir = cohort["root"] / "plan" / "fold"
    planned = set()
    for shard in manifest["shards"]:
        rows = pq.read_table(plan_dir / "shards" / f"{shard['shard_id']}.parquet").to_pylist()
        assert [r["length"] for r in rows] == sorted(r["length"] for r in rows)
        planned |= {r["seq_hash"] for r in rows}
    assert planned == cohort["distinct"] - {cohort["long"]}
    assert manifest["counts"] == {"cached": 0, "planned": len(planned), "too_long": 1}
    assert len(manifest["shards"]) > 1
    assert read_manifest(plan_dir)["settings"] == SETTINGS["fold"]


def test_gather_tables_one_row_per_distinct_sequence(cohort):
    run_stage(cohort, "embed", fail={})
    run_stage(cohort, "fold", max_length=200)
    root = cohort["root"]
    emb = ds.dataset(root / "results" / "embeddings").to_table()
    assert sorted(emb["seq_hash"].to_pylist()) == sorted(cohort["distinct"])
    assert "status" not in emb.column_names
    st = ds.dataset(root / "results" / "structures").to_table()
    assert sorted(st["seq_hash"].to_pylist()) == sorted(cohort["distinct"] - {cohort["long"]})
    meta = json.loads(pq.read_schema(next((root / "results" / "structures").glob("*.parquet")))
                      .metadata[b"esmpipe"])
    assert meta["model"] == "fake-fold" and meta["settings"] == SETTINGS["fold"]

    gather_proteins(cohort["ingest"], {"embed": root / "status" / "embed.parquet",
                                       "fold": root / "status" / "fold.parquet"},
                    root / "results" / "proteins")
    prot = ds.dataset(root / "results" / "proteins").to_table().to_pandas()
    assert len(prot) == cohort["records"]
    by_id = dict(zip(prot["protein_id"], prot["status"], strict=True))
    assert by_id["a3"] == "empty"
    assert by_id["a5"] == "invalid_characters"
    assert by_id["a4"] == "too_long_for_fold"
    assert by_id["a1"] == by_id["b3"] == "ok"
    row = prot[prot["protein_id"] == "a4"].iloc[0]
    assert row["embed_status"] == "ok" and row["fold_status"] == "too_long"

    con = duckdb.connect()
    n = con.execute(
        f"SELECT count(*) FROM read_parquet('{root}/results/structures/*.parquet') s "
        f"JOIN read_parquet('{root}/results/proteins/*.parquet') p USING (seq_hash)"
    ).fetchone()[0]
    assert n == 6  # a1, a2, b1, b2, b3, b4: shared sequences join once per record


def test_failures_are_reported_per_stage(cohort):
    oom = digest(pq.read_table(cohort["ingest"][1]).to_pylist()[1]["sequence"])  # b2
    run_stage(cohort, "embed", fail={oom: "out_of_memory"})
    root = cohort["root"]
    emb = ds.dataset(root / "results" / "embeddings").to_table()
    assert oom not in emb["seq_hash"].to_pylist()
    gather_proteins(cohort["ingest"], {"embed": root / "status" / "embed.parquet"},
                    root / "results" / "proteins")
    prot = ds.dataset(root / "results" / "proteins").to_table().to_pandas()
    assert prot.set_index("protein_id").loc["b2", "status"] == "out_of_memory_for_embed"
    assert prot["fold_status"].isna().all()


def test_adding_a_sample_plans_only_new_sequences(cohort):
    first = run_stage(cohort, "embed")
    rng = cohort["rng"]
    known = pq.read_table(cohort["ingest"][0]).to_pylist()[0]["sequence"]
    new = [protein(rng, 55), protein(rng, 77)]
    cohort["ingest"].append(write_ingest(
        cohort["root"] / "ingest" / "c.parquet", "c",
        [("c1", known, "ok"), ("c2", new[0], "ok"), ("c3", new[1], "ok"), ("c4", new[1], "ok")],
    ))
    second = run_stage(cohort, "embed")
    plan_dir = cohort["root"] / "plan" / "embed"
    planned = {h for s in second["shards"] for h in pq.read_table(
        plan_dir / "shards" / f"{s['shard_id']}.parquet")["seq_hash"].to_pylist()}
    assert planned == {digest(s) for s in new}
    assert second["counts"]["cached"] == len(cohort["distinct"])
    assert set(second["cached_parts"]) == {f"{s['shard_id']}.parquet" for s in first["shards"]}
    emb = ds.dataset(cohort["root"] / "results" / "embeddings").to_table()
    assert sorted(emb["seq_hash"].to_pylist()) == sorted(cohort["distinct"] | planned)
    # Same inputs again: nothing to compute.
    third = run_stage(cohort, "embed")
    assert third["shards"] == [] and third["counts"]["planned"] == 0
    # Other settings use another cache folder, so everything is planned again.
    other = plan_stage(cohort["ingest"], stage="embed", settings={"model": "m2"},
                       cache_dir=cohort["root"] / "cache" / "embed-m2",
                       output_dir=cohort["root"] / "plan" / "embed-m2", shard_size=1e9,
                       cost_exponent=1, max_length=None)
    assert other["counts"]["planned"] == len(cohort["distinct"]) + 2


def test_missing_cache_part_is_an_error(cohort):
    manifest = run_stage(cohort, "embed")
    root = cohort["root"]
    (root / "cache" / "embed" / f"{manifest['shards'][0]['shard_id']}.parquet").unlink()
    with pytest.raises(GatherError, match="missing"):
        gather_stage(root / "plan" / "embed", root / "results" / "embeddings",
                     root / "status" / "embed.parquet")


def test_overall_status():
    assert overall_status("empty", {"embed": None}) == "empty"
    assert overall_status("ok", {"embed": "ok", "fold": "too_long"}) == "too_long_for_fold"
    assert overall_status("ok", {"embed": "out_of_memory", "fold": "ok"}) == \
        "out_of_memory_for_embed"
    assert overall_status("ok", {"embed": None, "fold": "ok"}) == "ok"
