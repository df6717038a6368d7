"""The report on demo results, and on a copy carrying the columns other stages may add
(structures `flags`, embeddings LM scores, a contigs table)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline.report import PLOTS, embedding_map, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def counts_of(paths):
    return pd.read_csv(paths["counts"], sep="\t").set_index("sample")


def assert_records_add_up(counts):
    skipped = [c for c in counts.columns if c.startswith("skipped_")]
    assert (counts["input_records"] == counts["ok_records"] + counts[skipped].sum(axis=1)).all()
    samples = counts.drop(index="cohort")
    numeric = ["input_records", "ok_records", "confident_records", *skipped]
    assert (samples[numeric].sum() == counts.loc["cohort", numeric]).all()


def test_report_on_the_demo(res, demo_results, tmp_path):
    paths = write_report(demo_results, tmp_path / "report", min_plddt=50.0, min_ptm=0.12)
    for name in PLOTS:
        assert paths[name].read_bytes().startswith(PNG)
    counts = counts_of(paths)
    assert_records_add_up(counts)
    hits = res.hits(50.0, 0.12)
    assert counts.loc["cohort", "confident_records"] == len(hits) > 0
    for sample, n in hits.groupby("sample").size().items():
        assert counts.loc[sample, "confident_records"] == n
    # Columns that depend on what the other stages wrote appear exactly when it is there.
    has_flags = "flags" in res.columns("structures")
    assert ("flagged" in counts.columns) == has_flags
    assert ("contigs" in counts.columns) == res.has("contigs")
    if res.has("contigs"):
        assert_contigs_add_up(counts, res)


def assert_contigs_add_up(counts, res):
    contigs = res.query("SELECT sample, count(*)::BIGINT AS n, sum(genes)::BIGINT AS genes "
                        "FROM contigs "
                        "GROUP BY sample").set_index("sample")
    statuses = [c for c in counts.columns if c.startswith("contigs_")]
    assert (counts["contigs"] == counts[statuses].sum(axis=1)).all()
    for sample, row in contigs.iterrows():
        assert counts.loc[sample, "contigs"] == row.n
        # Every called gene is an input record of its contig sample.
        assert counts.loc[sample, "genes_called"] == row.genes == \
            counts.loc[sample, "input_records"]
    assert counts.loc["cohort", "contigs"] == contigs.n.sum()


def test_embedding_map_is_the_pca(res, demo_results):
    coords, samples, explained = embedding_map(demo_results, res.query(
        "SELECT sample, seq_hash FROM proteins"))
    pairs = res.query("SELECT DISTINCT p.sample, p.seq_hash FROM proteins p "
                      "JOIN embeddings e USING (seq_hash)")
    assert len(coords) == len(samples) == len(pairs)
    assert sorted(samples) == sorted(pairs["sample"])
    table = res.query("SELECT seq_hash, embedding FROM embeddings")
    matrix = np.stack(table["embedding"]).astype(np.float64)
    matrix -= matrix.mean(axis=0)
    _, s, vt = np.linalg.svd(matrix, full_matrices=False)
    expected = matrix @ vt[:2].T
    # Each point is its sequence's projection (up to the sign of each axis).
    got = np.abs(np.unique(np.round(np.abs(coords), 6), axis=0))
    want = np.unique(np.round(np.abs(expected), 6), axis=0)
    assert np.allclose(got, want, atol=1e-5)
    assert np.allclose(explained, (s ** 2)[:2] / (s ** 2).sum())


def put(table, name, values):
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


@pytest.fixture
def richer_results(demo_results, tmp_path):
    """A copy of the demo results with flags, LM scores and a contigs table (replacing
    any the demo made)."""
    copy = tmp_path / "results"
    shutil.copytree(demo_results, copy, ignore=shutil.ignore_patterns(".index", "cache",
                                                                      "report"))
    for part in sorted((copy / "structures").rglob("*.parquet")):
        table = pq.read_table(part)
        flags = [["suspect_ptm"] if i % 3 == 0 else [] for i in range(table.num_rows)]
        pq.write_table(put(table, "flags", pa.array(flags, pa.list_(pa.string()))), part)
    for part in sorted((copy / "embeddings").rglob("*.parquet")):
        table = pq.read_table(part)
        score = pa.array(np.linspace(-3, -1, table.num_rows), pa.float32())
        pq.write_table(put(table, "mean_log_prob", score), part)
    shutil.rmtree(copy / "contigs", ignore_errors=True)
    (copy / "contigs").mkdir()
    pq.write_table(pa.table({
        "sample": ["sample_c"] * 3,
        "contig": ["contig_1", "contig_2", "contig_3"],
        "length": pa.array([2000, 1900, 150], pa.int64()),
        "genes": pa.array([4, 4, 0], pa.int32()),
        "status": ["ok", "ok", "no_genes"],
    }), copy / "contigs" / "part-00000.parquet")
    return copy


def test_report_with_the_columns_others_add(richer_results, tmp_path):
    paths = write_report(richer_results, tmp_path / "report")
    counts = counts_of(paths)
    assert_records_add_up(counts)
    structures = pq.read_table(richer_results / "structures").to_pandas()
    flagged = set(structures.loc[structures["flags"].map(len) > 0, "seq_hash"])
    proteins = pq.read_table(richer_results / "proteins").to_pandas()
    for sample, group in proteins.groupby("sample"):
        assert counts.loc[sample, "flagged"] == len(set(group["seq_hash"].dropna()) & flagged)
    assert counts.loc["cohort", "flagged"] == len(flagged)
    # Contigs: every input contig accounted for, and the called genes are the records.
    assert counts.loc["sample_c", "contigs"] == 3
    assert counts.loc["sample_c", "contigs_ok"] + counts.loc["sample_c", "contigs_no_genes"] == 3
    assert counts.loc["sample_c", "genes_called"] == counts.loc["sample_c", "input_records"]
    assert counts.loc["sample_a", "contigs"] == 0
    assert counts.loc["cohort", "contigs"] == 3
    assert paths["lm_scores.png"].read_bytes().startswith(PNG)
