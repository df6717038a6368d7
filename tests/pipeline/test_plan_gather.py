import json

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline.gather import GatherError, gather_proteins, gather_stage, overall_status
from esmpipe.pipeline.plan import plan_stage, read_manifest

from .conftest import digest, fake_compute, protein, write_ingest

SETTINGS = {"embed": {"stage": "embed", "model": "m1"}, "fold": {"stage": "fold", "model": "f1"}}


def run_stage(cohort, stage, *, max_length=None, fail=None, settings=None, shard_size=1.0,
              engine_limit=1022):
    """Plan, fake-compute every new shard into the cache, gather. Returns the manifest.

    `engine_limit`: the limit of the fake engine when the plan passes no `max_length`."""
    root = cohort["root"]
    cache = root / "cache" / stage
    plan_dir = root / "plan" / stage
    manifest = plan_stage(
        cohort["ingest"], stage=stage, settings=settings or SETTINGS[stage], cache_dir=cache,
        output_dir=plan_dir, shard_size=shard_size, cost_exponent=1 if stage == "embed" else 3,
        max_length=max_length,
    )
    for shard in manifest["shards"]:
        fake_compute(stage, plan_dir / "shards" / f"{shard['shard_id']}.parquet",
                     cache / f"{shard['shard_id']}.parquet", fail=fail,
                     max_length=max_length or engine_limit)
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


def test_plan_is_independent_of_sample_order(cohort):
    root = cohort["root"]

    def plan(ingest, name):
        return plan_stage(ingest, stage="fold", settings=SETTINGS["fold"],
                          cache_dir=root / "cache" / "fold", output_dir=root / name,
                          shard_size=1.0, cost_exponent=3, max_length=200)

    forward, backward = plan(cohort["ingest"], "p1"), plan(cohort["ingest"][::-1], "p2")
    assert forward == backward
    for name in ("cohort.parquet", *(f"shards/{s['shard_id']}.parquet"
                                     for s in forward["shards"])):
        assert pq.read_table(root / "p1" / name).equals(pq.read_table(root / "p2" / name))


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


def test_fold_only_statuses(cohort):
    run_stage(cohort, "fold", max_length=200)
    root = cohort["root"]
    rows = gather_proteins(cohort["ingest"], {"fold": root / "status" / "fold.parquet"},
                           root / "results" / "proteins")
    prot = ds.dataset(root / "results" / "proteins").to_table().to_pandas()
    assert rows == len(prot) == cohort["records"]
    assert prot["embed_status"].isna().all()
    by_id = prot.set_index("protein_id")["status"]
    assert by_id["a4"] == "too_long_for_fold" and by_id["a3"] == "empty"
    assert (by_id[["a1", "a2", "b1", "b2", "b3", "b4"]] == "ok").all()


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


def test_out_of_memory_is_computed_again_on_the_next_run(cohort):
    """A failure that depends on the GPU or memory knobs is not a cached result: the next
    run plans the sequence again, and its new result replaces the old part's failure even
    though that part is still read for the other sequences it holds."""
    root = cohort["root"]
    oom = digest(pq.read_table(cohort["ingest"][1]).to_pylist()[1]["sequence"])  # b2
    first = run_stage(cohort, "embed", fail={oom: "out_of_memory"}, shard_size=1e9)
    assert len(first["shards"]) == 1
    second = run_stage(cohort, "embed", shard_size=1e9)  # e.g. on a GPU with more memory
    plan_dir = root / "plan" / "embed"
    planned = {h for s in second["shards"] for h in pq.read_table(
        plan_dir / "shards" / f"{s['shard_id']}.parquet")["seq_hash"].to_pylist()}
    assert planned == {oom}
    assert second["cached_parts"] == [f"{first['shards'][0]['shard_id']}.parquet"]
    status = pq.read_table(root / "status" / "embed.parquet").to_pylist()
    assert {r["seq_hash"]: r["status"] for r in status}[oom] == "ok"
    emb = ds.dataset(root / "results" / "embeddings").to_table()
    assert sorted(emb["seq_hash"].to_pylist()) == sorted(cohort["distinct"])


def test_too_long_for_the_engine_is_computed_again_under_a_higher_limit(cohort):
    """embed with `max_length: null`: the engine's default limit marks a sequence too_long.
    Re-runs keep that (same model, same limit) until the config asks for longer ones."""
    root = cohort["root"]
    first = run_stage(cohort, "embed", engine_limit=200)
    status = {r["seq_hash"]: r["status"]
              for r in pq.read_table(root / "status" / "embed.parquet").to_pylist()}
    assert status[cohort["long"]] == "too_long"
    assert first["counts"]["too_long"] == 0  # the planner had no limit
    assert run_stage(cohort, "embed", engine_limit=200)["shards"] == []
    assert run_stage(cohort, "embed", max_length=200)["shards"] == []
    third = run_stage(cohort, "embed", max_length=400)
    planned = {h for s in third["shards"] for h in pq.read_table(
        root / "plan" / "embed" / "shards" / f"{s['shard_id']}.parquet")["seq_hash"].to_pylist()}
    assert planned == {cohort["long"]}
    assert cohort["long"] in ds.dataset(root / "results" / "embeddings").to_table()[
        "seq_hash"].to_pylist()


def test_gather_takes_each_sequence_from_the_part_its_plan_names(cohort):
    """Cache parts may hold other results for a sequence (another cohort's run, a
    hand-copied part): only the part the plan chose counts."""
    root = cohort["root"]
    manifest = run_stage(cohort, "embed", shard_size=1e9)
    part = root / "cache" / "embed" / f"{manifest['shards'][0]['shard_id']}.parquet"
    # A stale part sorting first that holds a failure for every sequence of the cohort.
    stale = pq.read_table(part)
    stale = stale.set_column(stale.schema.get_field_index("status"), "status",
                             pa.array(["out_of_memory"] * stale.num_rows))
    pq.write_table(stale, root / "cache" / "embed" / f"{'0' * 20}.parquet")
    again = run_stage(cohort, "embed", shard_size=1e9)
    assert again["shards"] == [] and again["cached_parts"] == [part.name]
    status = pq.read_table(root / "status" / "embed.parquet")["status"].to_pylist()
    assert set(status) == {"ok"}


def test_plan_folder_is_replaced_whole(cohort):
    """A plan of fewer sequences into the same folder keeps no shard of the old plan."""
    root = cohort["root"]
    run_stage(cohort, "embed")
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c",
                                         [("c1", protein(cohort["rng"], 70), "ok")]))
    second = run_stage(cohort, "embed")
    shards = sorted(p.name for p in (root / "plan" / "embed" / "shards").iterdir())
    assert shards == sorted(f"{s['shard_id']}.parquet" for s in second["shards"])
    assert len(shards) == 1


def test_failed_gather_keeps_the_previous_table(cohort):
    """A gather that fails half-way leaves the old table as it was, and no temporary files."""
    root = cohort["root"]
    manifest = run_stage(cohort, "embed")
    before = ds.dataset(root / "results" / "embeddings").to_table()
    # A cache part that lost a row since planning: the gather must fail.
    part = root / "cache" / "embed" / f"{manifest['shards'][-1]['shard_id']}.parquet"
    pq.write_table(pq.read_table(part).slice(1), part)
    with pytest.raises(GatherError, match="absent from their cache parts"):
        gather_stage(root / "plan" / "embed", root / "results" / "embeddings",
                     root / "status" / "embed.parquet", rows_per_file=1)
    assert ds.dataset(root / "results" / "embeddings").to_table().equals(before)
    assert sorted(p.name for p in (root / "results").iterdir()) == ["embeddings"]


def test_a_record_without_a_stage_status_is_named(cohort):
    run_stage(cohort, "embed")
    root = cohort["root"]
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c",
                                         [("c1", protein(cohort["rng"], 70), "ok")]))
    with pytest.raises(GatherError, match=r"embed\.parquet: no embed status for record c/c1"):
        gather_proteins(cohort["ingest"], {"embed": root / "status" / "embed.parquet"},
                        root / "results" / "proteins")


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
