"""The proteins gather when nothing changed: with --reuse-dir, the status tables byte for
byte as last time and every ingest table the same file, the files stand without a join."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline import gather as gather_module

from .test_cohort_gather import compute, gather, plan
from .test_cohort_proteins import inodes, proteins, rows


@pytest.fixture
def gathered(cohort):
    compute(cohort, plan(cohort))
    gather(cohort)
    keep = cohort["root"] / "work" / "gathered" / "proteins"
    assert proteins(cohort, reuse_dir=keep) == cohort["records"]
    return keep


def no_join(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the statuses were joined again")
    monkeypatch.setattr(gather_module._DerivedColumns, "digests", refuse)


def test_nothing_changed_keeps_every_file_without_a_join(cohort, gathered, monkeypatch):
    folder = cohort["root"] / "results" / "proteins"
    first, table = inodes(folder), rows(folder)
    shutil.rmtree(folder)  # as Snakemake does before the job
    status = cohort["root"] / "status" / "embeddings.parquet"
    # Written again with the same bytes (a rerun of the stage gather): still unchanged.
    shutil.copy(status, status.with_suffix(".tmp"))
    status.with_suffix(".tmp").replace(status)
    no_join(monkeypatch)
    assert proteins(cohort, reuse_dir=gathered) == cohort["records"]
    assert inodes(folder) == first == inodes(gathered)
    assert rows(folder).equals(table)
    # And again, from the links this gather left.
    shutil.rmtree(folder)
    assert proteins(cohort, reuse_dir=gathered) == cohort["records"]
    assert inodes(folder) == first


def test_a_changed_status_is_joined_and_written(cohort, gathered, monkeypatch):
    folder = cohort["root"] / "results" / "proteins"
    status = cohort["root"] / "status" / "embeddings.parquet"
    table = pq.read_table(status)
    target = pq.read_table(cohort["ingest"][0])["seq_hash"][0].as_py()
    changed = pc.if_else(pc.equal(table["seq_hash"], target), "out_of_memory", table["status"])
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", changed),
                   status)
    assert proteins(cohort, reuse_dir=gathered) == cohort["records"]
    got = rows(folder).to_pylist()
    assert {r["embed_status"] for r in got if r["seq_hash"] == target} == {"out_of_memory"}
    # The check is on, so a changed status table without the join must fail loudly.
    no_join(monkeypatch)
    pq.write_table(table, status)
    with pytest.raises(AssertionError, match="joined again"):
        proteins(cohort, reuse_dir=gathered)


def test_a_new_ingest_file_is_not_taken_for_unchanged(cohort, gathered, monkeypatch):
    path = cohort["ingest"][1]
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_batches(table.to_batches(), table.schema), path)
    no_join(monkeypatch)
    with pytest.raises(AssertionError, match="joined again"):
        proteins(cohort, reuse_dir=gathered)


def test_without_reuse_dir_the_files_are_checked(cohort, gathered, monkeypatch):
    no_join(monkeypatch)
    with pytest.raises(AssertionError, match="joined again"):
        proteins(cohort)
