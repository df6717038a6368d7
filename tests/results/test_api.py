"""`esmpipe.results.Results` on the demo results: SQL, views, hits, structures."""

from __future__ import annotations

import shutil

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from esmpipe.results import RecordNotFound, Results


def raw(results, sql):
    """SQL straight on the Parquet files, without our views."""
    con = duckdb.connect()
    for name in ("proteins", "structures", "embeddings", "contigs"):
        if not (results / name).is_dir():
            continue
        con.execute(f"CREATE VIEW raw_{name} AS SELECT * FROM "
                    f"read_parquet('{results}/{name}/**/*.parquet')")
    return con.sql(sql).to_df()


def middle_thresholds(res):
    s = res.query("SELECT median(mean_plddt) AS p, quantile_cont(ptm, 0.3) AS t FROM structures")
    return float(s.p[0]), float(s.t[0])


def test_query_pandas_and_arrow(res, demo_results):
    sql = "SELECT sample, count(*) AS n FROM proteins GROUP BY sample ORDER BY sample"
    frame = res.query(sql)
    assert isinstance(frame, pd.DataFrame)
    expected = raw(demo_results, "SELECT sample, count(*) AS n FROM raw_proteins "
                                 "GROUP BY sample ORDER BY sample")
    assert frame.to_dict("list") == expected.to_dict("list")
    table = res.query_arrow(sql)
    assert isinstance(table, pa.Table) and table.to_pandas().equals(frame)
    assert res.query("SELECT count(*) AS n FROM proteins WHERE sample = ?",
                     ["sample_a"]).n[0] == expected.set_index("sample").n["sample_a"]
    with pytest.raises(ValueError, match="(?s)query failed.*views: sequences"):
        res.query("SELECT * FROM nowhere")


def test_lazy_relations(res, demo_results):
    assert isinstance(res.proteins, duckdb.DuckDBPyRelation)
    n = raw(demo_results, "SELECT count(*) AS n FROM raw_structures").n[0]
    assert res.structures.count("*").fetchall()[0][0] == n
    ok = res.proteins.filter("status = 'ok'").aggregate("count(*)").fetchall()[0][0]
    assert ok == (res.query("SELECT status FROM proteins").status == "ok").sum()
    assert "embedding" in res.embeddings.columns
    # The demo has contig samples: results/contigs accounts for every contig.
    assert res.tables == ["proteins", "structures", "embeddings", "contigs"]
    contigs = raw(demo_results, "SELECT count(*) AS n FROM raw_contigs").n[0]
    assert res.contigs.count("*").fetchall()[0][0] == contigs > 0


def test_missing_table_is_named(demo_results, tmp_path):
    from esmpipe.results import Results

    partial = tmp_path / "results"
    partial.mkdir()
    shutil.copytree(demo_results / "proteins", partial / "proteins")
    with Results(partial, index_dir=tmp_path / "index") as results:
        assert results.tables == ["proteins"]
        with pytest.raises(RecordNotFound, match="no table 'contigs'"):
            results.contigs  # noqa: B018


def test_sequences_view_is_the_prevalence(res):
    proteins = res.query("SELECT sample, seq_hash FROM proteins WHERE seq_hash IS NOT NULL")
    expected = proteins.groupby("seq_hash").agg(n_samples=("sample", "nunique"),
                                                n_records=("sample", "size"))
    view = res.query("SELECT seq_hash, n_samples, n_records, samples FROM sequences")
    view = view.set_index("seq_hash").sort_index()
    counts = view[["n_samples", "n_records"]].astype("int64")
    assert counts.equals(expected.sort_index().astype("int64"))
    assert (view.n_samples > 1).any()  # the demo shares sequences between samples
    shared = res.resolve("b_shared")
    assert list(view.loc[shared, "samples"]) == ["sample_a", "sample_b"]


def test_hits_are_the_same_sql(res, demo_results):
    min_plddt, min_ptm = middle_thresholds(res)
    hits = res.hits(min_plddt=min_plddt, min_ptm=min_ptm)
    expected = raw(demo_results, f"""
        SELECT p.sample, p.protein_id, s.mean_plddt, s.ptm FROM raw_proteins p
        JOIN raw_structures s ON p.seq_hash = s.seq_hash
        WHERE s.mean_plddt > {min_plddt} AND s.ptm > {min_ptm}""")
    assert 0 < len(hits) < res.records.filter("mean_plddt IS NOT NULL").count("*").fetchall()[0][0]
    key = ["sample", "protein_id"]
    assert sorted(map(tuple, hits[key].values)) == sorted(map(tuple, expected[key].values))
    assert (hits.mean_plddt > min_plddt).all() and (hits.ptm > min_ptm).all()
    assert {"seq_hash", "length", "n_samples", "n_records", "sequence"} <= set(hits.columns)
    # Strictly above: a threshold equal to a structure's score leaves that one out.
    top = hits.sort_values("mean_plddt").iloc[0]
    again = res.hits(min_plddt=float(top.mean_plddt), min_ptm=min_ptm)
    assert top.protein_id not in set(again.protein_id) and len(again) < len(hits)
    # The Atlas's thresholds: random demo weights give no confident structure.
    assert len(res.hits()) == len(raw(demo_results, "SELECT * FROM raw_structures "
                                                    "WHERE mean_plddt > 70 AND ptm > 0.7"))


def test_hits_of_some_samples(res):
    min_plddt, min_ptm = middle_thresholds(res)
    every = res.hits(min_plddt=min_plddt, min_ptm=min_ptm)
    some = res.hits(min_plddt=min_plddt, min_ptm=min_ptm, samples=["sample_b"])
    assert set(some["sample"]) == {"sample_b"}
    assert len(some) == (every["sample"] == "sample_b").sum() > 0
    assert res.hits(min_plddt=0, min_ptm=0, samples=[]).empty


def test_resolve_names(res):
    digest = res.resolve("a1")
    assert res.resolve(digest) == digest
    assert res.resolve("sample_a/a1") == digest
    assert res.resolve("a1", sample="sample_a") == digest
    with pytest.raises(RecordNotFound, match="no record"):
        res.resolve("a1", sample="sample_b")
    with pytest.raises(RecordNotFound, match="no sequence.*status empty"):
        res.resolve("a_empty")
    with pytest.raises(RecordNotFound, match="no record '../x'"):
        res.resolve("../x")


def test_structure_text(res, demo_results):
    digest = res.resolve("a1")
    stored = raw(demo_results, f"SELECT pdb FROM raw_structures WHERE seq_hash = '{digest}'")
    assert res.structure("a1") == stored.pdb[0]
    assert res.structure(digest, format="pdb") == stored.pdb[0]
    cif = res.structure("sample_a/a1", format="cif")
    assert cif.startswith(f"data_{digest[:16]}") and "_atom_site.B_iso_or_equiv" in cif
    with pytest.raises(RecordNotFound, match="no structure"):
        res.structure("b_long")
    with pytest.raises(ValueError, match="format"):
        res.structure("a1", format="xyz")


def test_metadata_names_the_model(res):
    assert res.metadata("embeddings")["model"].endswith("tiny-esm2")
    assert res.metadata("nowhere") == {}


def test_results_folder_without_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results tables"):
        Results(tmp_path)
