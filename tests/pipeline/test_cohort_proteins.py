"""The proteins table, incrementally: one file per ingest table, kept (hard-linked) while
that sample's rows stay the same, rewritten when a result of one of its sequences arrives."""

from __future__ import annotations

import shutil

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.pipeline.gather import _sample_names, gather_proteins

from .conftest import protein, write_ingest
from .test_cohort_gather import compute, gather, plan


def inodes(folder):
    return {f.name: f.stat().st_ino for f in folder.glob("*.parquet")}


def proteins(cohort, folder="proteins", **kwargs):
    root = cohort["root"]
    return gather_proteins(cohort["ingest"], {"embed": root / "status" / "embeddings.parquet"},
                           root / "results" / folder, **kwargs)


def rows(folder):
    return ds.dataset(folder).to_table().sort_by([("sample", "ascending"),
                                                   ("protein_id", "ascending")])


def test_one_file_per_sample_in_the_ingest_order(cohort):
    compute(cohort, plan(cohort))
    gather(cohort)
    assert proteins(cohort) == cohort["records"]
    folder = cohort["root"] / "results" / "proteins"
    assert sorted(inodes(folder)) == ["a-00000.parquet", "b-00000.parquet"]
    for sample, ingest in zip("ab", cohort["ingest"], strict=True):
        written = pq.read_table(folder / f"{sample}-00000.parquet")
        assert written["protein_id"].to_pylist() == \
            pq.read_table(ingest)["protein_id"].to_pylist()
        assert set(written["sample"].to_pylist()) == {sample}


def test_adding_a_sample_writes_only_its_file(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    proteins(cohort)
    folder = root / "results" / "proteins"
    before = inodes(folder)
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c", [
        ("c1", protein(cohort["rng"], 70), "ok"), ("c2", "", "empty")]))
    compute(cohort, plan(cohort))
    gather(cohort)
    assert proteins(cohort) == cohort["records"] + 2
    after = inodes(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"c-00000.parquet"}
    # The same rows as a fresh gather; one dataset for pyarrow and DuckDB.
    proteins(cohort, folder="fresh")
    assert rows(folder).equals(rows(root / "results" / "fresh"))
    n = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()[0]
    assert n == cohort["records"] + 2


def test_a_result_that_arrives_rewrites_the_samples_that_need_it(cohort):
    root = cohort["root"]
    manifest = plan(cohort, shard_size=1e9)
    assert len(manifest["shards"]) == 1
    compute(cohort, manifest)
    gather(cohort)
    # Sample c's only sequence comes from a shard that failed.
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c", [
        ("c1", protein(cohort["rng"], 70), "ok")]))
    failed = plan(cohort)["shards"][0]["shard_id"]
    gather(cohort, allow_missing=True, log_pattern="logs/{stage}/{shard}.log")
    proteins(cohort)
    folder = root / "results" / "proteins"
    first = inodes(folder)
    c = pq.read_table(folder / "c-00000.parquet").to_pylist()
    assert [(r["status"], r["log"]) for r in c] == [("not_computed_for_embed",
                                                      f"logs/embed/{failed}.log")]
    # The job runs later: only c's file changes, and it says ok now.
    compute(cohort, {"shards": [{"shard_id": failed}]})
    gather(cohort)
    proteins(cohort)
    second = inodes(folder)
    assert {k for k in second if second[k] != first[k]} == {"c-00000.parquet"}
    c = pq.read_table(folder / "c-00000.parquet").to_pylist()
    assert [(r["embed_status"], r["status"], r["log"]) for r in c] == [("ok", "ok", None)]
    proteins(cohort, folder="fresh")
    assert rows(folder).equals(rows(root / "results" / "fresh"))


def test_a_changed_ingest_table_or_stage_set_is_written_again(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    proteins(cohort)
    folder = root / "results" / "proteins"
    first = inodes(folder)
    # Sample b ingested again (same rows, a new file): b's file is written again.
    write_ingest(cohort["ingest"][1], "b", [(r["protein_id"], r["sequence"], r["status"])
                                            for r in pq.read_table(cohort["ingest"][1])
                                            .to_pylist()])
    proteins(cohort)
    second = inodes(folder)
    assert {k for k in second if second[k] != first[k]} == {"b-00000.parquet"}
    # Without the embed stage every file changes (its status column is null now).
    gather_proteins(cohort["ingest"], {}, folder)
    third = inodes(folder)
    assert not set(third.values()) & set(second.values())
    assert set(ds.dataset(folder).to_table()["embed_status"].to_pylist()) == {None}


def test_reuse_dir_survives_the_output_being_deleted(cohort, tmp_path):
    """Snakemake deletes a rule's output folder before the job: --reuse-dir keeps links."""
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    keep = root / "work" / "gathered" / "proteins"
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in cohort["ingest"]))
    argv = ["gather", "--table", "proteins", "--ingest-list", str(listing),
            "--status", f"embed={root / 'status' / 'embeddings.parquet'}",
            "--output", str(root / "results" / "proteins"), "--reuse-dir", str(keep)]
    assert main(argv) == 0
    folder = root / "results" / "proteins"
    first = inodes(folder)
    assert inodes(keep) == first
    shutil.rmtree(folder)
    assert main(argv) == 0
    assert inodes(folder) == first == inodes(keep)


def test_reuse_dir_for_stage_tables(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    keep = root / "work" / "gathered" / "embeddings"
    gather(cohort, reuse_dir=keep)
    folder = root / "results" / "embeddings"
    first = inodes(folder)
    shutil.rmtree(folder)
    gather(cohort, reuse_dir=keep)
    assert inodes(folder) == first == inodes(keep)


def test_names_are_distinct_and_visible_to_readers():
    names = _sample_names(["w/a.parquet", "x/a.parquet", "w/_b.parquet", "w/.c.parquet",
                           "w/d e;f.parquet", "w/a.parquet", "w/S1.v2.parquet"])
    assert len(set(names)) == 7
    assert names[0] == "a" and names[4] == "d_e_f" and names[6] == "S1.v2"
    assert not any(n[0] in "._" for n in names)


def test_dotted_sample_names_keep_their_own_files(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    for sample, ingest in zip(("S1.v1", "S1.v2"), cohort["ingest"], strict=True):
        shutil.copy(ingest, root / "ingest" / f"{sample}.parquet")
    cohort["ingest"] = [root / "ingest" / "S1.v1.parquet", root / "ingest" / "S1.v2.parquet"]
    assert proteins(cohort) == cohort["records"]
    assert sorted(inodes(root / "results" / "proteins")) == ["S1.v1-00000.parquet",
                                                             "S1.v2-00000.parquet"]


def test_a_record_without_a_stage_status_still_fails(cohort):
    root = cohort["root"]
    compute(cohort, plan(cohort))
    gather(cohort)
    cohort["ingest"].append(write_ingest(root / "ingest" / "c.parquet", "c", [
        ("c1", protein(cohort["rng"], 70), "ok")]))
    with pytest.raises(Exception, match=r"no embed status for record c/c1"):
        proteins(cohort)


def test_a_table_listed_twice_gives_its_rows_twice_every_time(cohort):
    compute(cohort, plan(cohort))
    gather(cohort)
    cohort["ingest"].append(cohort["ingest"][0])
    twice = cohort["records"] + pq.read_metadata(cohort["ingest"][0]).num_rows
    folder = cohort["root"] / "results" / "proteins"
    for _ in range(2):
        assert proteins(cohort) == twice
        assert ds.dataset(folder).count_rows() == twice
