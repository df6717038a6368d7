import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline.query import QueryError, run_query, table_sources
from esmpipe.pipeline.report import cohort_counts, write_report

from .test_plan_gather import gather_proteins, run_stage

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results(cohort):
    run_stage(cohort, "embed")
    run_stage(cohort, "fold", max_length=200)
    root = cohort["root"]
    gather_proteins(cohort["ingest"], {"embed": root / "status" / "embed.parquet",
                                       "fold": root / "status" / "fold.parquet"},
                    root / "results" / "proteins")
    return root / "results"


def test_counts_per_sample_and_cohort():
    proteins = pd.DataFrame({
        "sample": ["a", "a", "a", "b", "b"],
        "seq_hash": ["h1", "h2", None, "h1", "h3"],
        "status": ["ok", "too_long_for_fold", "empty", "ok", "ok"],
    })
    structures = pd.DataFrame({"seq_hash": ["h1", "h3"], "mean_plddt": [80.0, 90.0],
                               "ptm": [0.8, 0.5]})
    embeddings = pd.DataFrame({"seq_hash": ["h1", "h2", "h3"]})
    counts = cohort_counts(proteins, structures, embeddings).set_index("sample")
    assert counts.loc["a", "input_records"] == 3
    assert counts.loc["a", "distinct_sequences"] == 2
    assert counts.loc["a", "folded"] == 1
    assert counts.loc["cohort", "input_records"] == 5
    assert counts.loc["cohort", "distinct_sequences"] == 3
    assert counts.loc["cohort", "embedded"] == 3
    assert counts.loc["cohort", "folded"] == 2
    assert counts.loc["cohort", "high_confidence"] == 1  # h3 has pTM 0.5
    assert counts.loc["cohort", "skipped_empty"] == 1
    assert counts.loc["a", "skipped_too_long_for_fold"] == 1
    assert counts.loc["b", "skipped_too_long_for_fold"] == 0


def test_write_report(results, tmp_path):
    paths = write_report(results, tmp_path / "report")
    for name in ("plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png"):
        assert paths[name].read_bytes().startswith(PNG)
    counts = pd.read_csv(paths["counts"], sep="\t").set_index("sample")
    assert counts.loc["cohort", "input_records"] == 9
    assert counts.loc["cohort", "skipped_too_long_for_fold"] == 1


def test_write_report_without_structures(results, tmp_path):
    import shutil

    shutil.rmtree(results / "structures")
    paths = write_report(results, tmp_path / "report")
    assert paths["ptm_vs_plddt.png"].read_bytes().startswith(PNG)
    assert "folded" in paths["counts"].read_text()


def test_write_report_with_nothing_folded(cohort, tmp_path):
    """Every sequence too long to fold: an empty structures table, empty plots."""
    run_stage(cohort, "fold", max_length=10)
    root = cohort["root"]
    gather_proteins(cohort["ingest"], {"fold": root / "status" / "fold.parquet"},
                    root / "results" / "proteins")
    paths = write_report(root / "results", tmp_path / "report")
    for name in ("plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png"):
        assert paths[name].read_bytes().startswith(PNG)
    counts = pd.read_csv(paths["counts"], sep="\t").set_index("sample")
    assert counts.loc["cohort", "folded"] == 0
    assert counts.loc["cohort", "skipped_too_long_for_fold"] == 7


def test_a_stage_switched_off_leaves_no_stale_table(results, tmp_path):
    """fold: false after a run with folding: results/structures is still there, but the
    new proteins table was gathered without fold, so report and query ignore it."""
    root = results.parent
    gather_proteins(sorted((root / "ingest").glob("*.parquet")),
                    {"embed": root / "status" / "embed.parquet"}, results / "proteins")
    assert (results / "structures").is_dir()
    assert set(table_sources(results)) == {"proteins", "embeddings"}
    paths = write_report(results, tmp_path / "report")
    counts = pd.read_csv(paths["counts"], sep="\t").set_index("sample")
    assert counts.loc["cohort", "folded"] == 0 and counts.loc["cohort", "high_confidence"] == 0
    assert counts.loc["cohort", "embedded"] == counts.loc["cohort", "distinct_sequences"]
    assert paths["ptm_vs_plddt.png"].read_bytes().startswith(PNG)


def test_query_formats(results, tmp_path):
    assert set(table_sources(results)) == {"proteins", "structures", "embeddings"}
    sql = "SELECT sample, count(*) AS n FROM proteins GROUP BY sample ORDER BY sample"
    text = run_query(sql, results)
    assert text.split()[:6] == ["sample", "n", "a", "5", "b", "4"]
    assert run_query(sql, results, fmt="csv").splitlines() == ["sample,n", "a,5", "b,4"]
    assert run_query(sql, results, fmt="tsv").splitlines()[1] == "a\t5"
    rows = [json.loads(line) for line in run_query(sql, results, fmt="json").splitlines()]
    assert rows == [{"sample": "a", "n": 5}, {"sample": "b", "n": 4}]
    out = tmp_path / "q.parquet"
    assert run_query(sql, results, fmt="parquet", output=out) is None
    assert pq.read_table(out).num_rows == 2
    joined = run_query(
        "SELECT count(*) AS n FROM proteins p JOIN structures s USING (seq_hash) "
        "JOIN embeddings e USING (seq_hash)", results, fmt="csv")
    assert joined.splitlines()[1] == "6"
    with pytest.raises(ValueError, match="--output"):
        run_query(sql, results, fmt="parquet")
    with pytest.raises(FileNotFoundError, match="no results tables"):
        run_query(sql, tmp_path / "nowhere")


def test_query_error_names_the_tables(results):
    with pytest.raises(QueryError, match="(?s)query failed: .*nowhere.*tables under .* are "
                                         "proteins, structures, embeddings"):
        run_query("SELECT * FROM nowhere", results)
