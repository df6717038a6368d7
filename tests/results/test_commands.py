"""`esmpipe hits|export|similar|query` as a user runs them, against the API and plain SQL."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from Bio import SeqIO
from Bio.PDB import MMCIFParser, PDBParser
from Bio.SeqUtils import seq1

from .conftest import run_esmpipe


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def rows(text, sep="\t"):
    return list(csv.DictReader(io.StringIO(text), delimiter=sep))


def thresholds(res):
    s = res.query("SELECT median(mean_plddt) AS p, quantile_cont(ptm, 0.3) AS t FROM structures")
    return float(s.p[0]), float(s.t[0])


# -- hits -----------------------------------------------------------------------------


def test_hits_command_is_the_api(res, demo_results, results_env, tmp_path):
    min_plddt, min_ptm = thresholds(res)
    args = ["hits", "--results", str(demo_results), "--min-plddt", str(min_plddt),
            "--min-ptm", str(min_ptm)]
    got = rows(ok(run_esmpipe(results_env, tmp_path, *args)).stdout)
    api = res.hits(min_plddt, min_ptm)
    assert [(r["sample"], r["protein_id"]) for r in got] == \
        list(zip(api["sample"], api["protein_id"], strict=True))
    assert np.allclose([float(r["ptm"]) for r in got], api["ptm"], atol=1e-6)

    fasta = ok(run_esmpipe(results_env, tmp_path, *args, "--format", "fasta")).stdout
    records = list(SeqIO.parse(io.StringIO(fasta), "fasta"))
    assert [r.id for r in records] == [f"{s}/{p}" for s, p in zip(api["sample"],
                                                                  api["protein_id"], strict=True)]
    assert [str(r.seq) for r in records] == list(api["sequence"])

    out = tmp_path / "hits.parquet"
    ok(run_esmpipe(results_env, tmp_path, *args, "--format", "parquet", "--output", str(out),
                   "--sample", "sample_b"))
    table = pq.read_table(out).to_pandas()
    assert set(table["sample"]) == {"sample_b"}
    assert len(table) == (api["sample"] == "sample_b").sum()

    csv_out = tmp_path / "hits.csv"
    ok(run_esmpipe(results_env, tmp_path, *args, "--format", "csv", "--output", str(csv_out)))
    assert len(rows(csv_out.read_text(), ",")) == len(api)


def test_hits_at_the_atlas_thresholds_has_a_header(demo_results, results_env, tmp_path):
    result = ok(run_esmpipe(results_env, tmp_path, "hits", "--results", str(demo_results)))
    assert result.stdout.split("\t")[:3] == ["sample", "protein_id", "seq_hash"]
    assert "0 records" in result.stderr


# -- export ---------------------------------------------------------------------------


def residues(structure):
    return [(r.get_parent().id, r.id[1], seq1(r.get_resname()),
             {a.get_id(): a.get_bfactor() for a in r}) for r in structure.get_residues()]


@pytest.mark.parametrize("fmt", ["pdb", "cif"])
def test_export_files_read_back(res, demo_results, results_env, tmp_path, fmt):
    out = tmp_path / "export"
    ok(run_esmpipe(results_env, tmp_path, "export", "--results", str(demo_results),
                   "--where", "mean_plddt IS NOT NULL", "--format", fmt, "--output", str(out)))
    index = rows((out / "index.tsv").read_text())
    structures = res.query("SELECT seq_hash, plddt, pdb FROM structures").set_index("seq_hash")
    files = sorted(p.name for p in out.iterdir() if p.name != "index.tsv")
    # One file per distinct structure; every folded record in the index.
    assert files == sorted(f"{h}.{fmt}" for h in structures.index)
    folded = res.query("SELECT sample, protein_id FROM records WHERE mean_plddt IS NOT NULL")
    assert sorted((r["sample"], r["protein_id"]) for r in index) == \
        sorted(zip(folded["sample"], folded["protein_id"], strict=True))
    assert {r["status"] for r in index} == {"exported"}

    parser = PDBParser(QUIET=True) if fmt == "pdb" else MMCIFParser(QUIET=True)
    stored_parser = PDBParser(QUIET=True)
    sequences = res.query("SELECT seq_hash, sequence FROM sequences").set_index("seq_hash")
    for name in files:
        digest = name.split(".")[0]
        got = residues(parser.get_structure(digest, str(out / name)))
        assert "".join(r[2] for r in got) == sequences.loc[digest, "sequence"]
        stored = residues(stored_parser.get_structure(
            "stored", io.StringIO(structures.loc[digest, "pdb"])))
        assert got == stored  # same residues, atoms and per-atom B-factors
        ca = np.array([r[3]["CA"] for r in got])
        assert np.allclose(ca, structures.loc[digest, "plddt"], atol=0.006)
        assert 0 <= ca.min() and ca.max() <= 100


def test_export_by_ids_accounts_for_every_line(res, demo_results, results_env, tmp_path):
    ids = tmp_path / "ids.txt"
    shared = res.resolve("a_shared")
    ids.write_text(f"a1\nsample_b/b_shared\nsample_c\tcontig_1_1\nb_long\n../x\n{shared}\n"
                   "# a comment\n\n")
    out = tmp_path / "by-ids"
    ok(run_esmpipe(results_env, tmp_path, "export", "--results", str(demo_results),
                   "--ids", str(ids), "--output", str(out)))
    index = rows((out / "index.tsv").read_text())
    by_query = {}
    for r in index:
        by_query.setdefault(r["query"], []).append(r)
    assert by_query["a1"][0]["file"] == f"{res.resolve('a1')}.pdb"
    assert by_query["sample_b/b_shared"][0]["file"] == f"{shared}.pdb"
    assert by_query["contig_1_1"][0]["sample"] == "sample_c"
    assert by_query["b_long"][0]["status"] == "too_long_for_fold"
    assert by_query["b_long"][0]["file"] == ""
    assert by_query["../x"] == [dict(by_query["../x"][0], status="not_found", file="")]
    # A seq_hash names every record with that sequence; they share one file.
    assert {(r["sample"], r["file"]) for r in by_query[shared]} == \
        {("sample_a", f"{shared}.pdb"), ("sample_b", f"{shared}.pdb")}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {r["file"] for r in index if r["file"]} | {"index.tsv"})


def test_export_refuses_a_folder_that_is_not_an_export(demo_results, results_env, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    result = run_esmpipe(results_env, tmp_path, "export", "--results", str(demo_results),
                         "--where", "true", "--output", str(keep))
    assert result.returncode == 2 and "not an earlier export" in result.stderr
    assert (keep / "notes.txt").read_text() == "precious"
    bad = run_esmpipe(results_env, tmp_path, "export", "--results", str(demo_results),
                      "--where", "nonsense > 1", "--output", str(tmp_path / "x"))
    assert bad.returncode == 2 and "nonsense" in bad.stderr and "columns:" in bad.stderr


# -- similar --------------------------------------------------------------------------


def brute_force(demo_results, vector):
    table = ds.dataset(demo_results / "embeddings", format="parquet").to_table()
    matrix = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    q = np.asarray(vector, dtype=np.float64)
    scores = matrix @ (q / np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")
    return [table["seq_hash"][int(i)].as_py() for i in order], scores[order]


def stored_vector(demo_results, digest):
    table = ds.dataset(demo_results / "embeddings", format="parquet").to_table()
    row = table["seq_hash"].to_pylist().index(digest)
    return np.asarray(table["embedding"][row].as_py())


def test_similar_ranks_the_query_first_and_agrees_with_brute_force(
        res, demo_results, results_env, tmp_path):
    digest = res.resolve("a1")
    ranked, scores = brute_force(demo_results, stored_vector(demo_results, digest))
    got = res.similar("a1", k=6)
    assert got["seq_hash"][0] == digest and got["similarity"][0] == pytest.approx(1, abs=1e-5)
    assert list(got["seq_hash"]) == ranked[:6]
    assert np.allclose(got["similarity"], scores[:6], atol=1e-5)
    assert list(got["rank"]) == [1, 2, 3, 4, 5, 6]

    cli = rows(ok(run_esmpipe(results_env, tmp_path, "similar", "--results", str(demo_results),
                              "--query", "sample_a/a1", "-k", "6", "--format", "tsv",
                              "--index-dir", str(tmp_path / "ix"))).stdout)
    assert [r["seq_hash"] for r in cli] == list(got["seq_hash"])
    assert [r["record"] for r in cli][0] == "sample_a/a1"


def test_similar_by_sequence(res, demo_results):
    sequence = res.query("SELECT sequence FROM proteins WHERE protein_id = 'a2'").sequence[0]
    got = res.similar(sequence.lower(), k=3)  # normalised like the input was
    assert got["seq_hash"][0] == res.resolve("a2")


def test_out_of_cohort_sequence_is_embedded_with_the_recorded_model(res, demo_results):
    from esmpipe.results.similar import embed_sequence

    sequence = res.query("SELECT sequence FROM proteins WHERE protein_id = 'b1'").sequence[0]
    again = embed_sequence(res, sequence)
    stored = stored_vector(demo_results, res.resolve("b1"))
    assert np.allclose(again, stored, atol=1e-4)

    novel = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    got = res.similar(novel, k=4)
    ranked, scores = brute_force(demo_results, embed_sequence(res, novel))
    assert list(got["seq_hash"]) == ranked[:4]
    assert np.allclose(got["similarity"], scores[:4], atol=1e-5)


def test_similar_errors(res, demo_results, results_env, tmp_path):
    result = run_esmpipe(results_env, tmp_path, "similar", "--results", str(demo_results),
                         "--query", "no_such_thing!", "--index-dir", str(tmp_path / "ix"))
    assert result.returncode == 2 and "no record" in result.stderr
    with pytest.raises(KeyError, match="no record 'nope'"):  # a typo is not a sequence
        res.similar("nope")
    with pytest.raises(KeyError, match="no sequence to look up"):
        res.similar("a_empty")


def test_index_is_rebuilt_when_a_part_changes(res, demo_results, tmp_path):
    import shutil

    from esmpipe.results import Results

    copy = tmp_path / "copy"
    shutil.copytree(demo_results, copy, ignore=shutil.ignore_patterns(".index", "cache"))
    with Results(copy, index_dir=tmp_path / "ix2") as first:
        first.similar("a1", k=2)
    b1 = res.resolve("b1")
    part = next(p for p in sorted((copy / "embeddings").rglob("*.parquet"))
                if b1 in set(pq.read_table(p, columns=["seq_hash"])["seq_hash"].to_pylist()))
    table = pq.read_table(part)
    keep = [h != b1 for h in table["seq_hash"].to_pylist()]
    pq.write_table(table.filter(keep), part)
    with Results(copy, index_dir=tmp_path / "ix2") as second:
        assert b1 not in set(second.similar("a1", k=50)["seq_hash"])


# -- query ----------------------------------------------------------------------------


def test_query_streams_and_limits(demo_results, results_env, tmp_path):
    big = "SELECT p.sample, r.range AS i FROM proteins p, range(10) r"
    shown = ok(run_esmpipe(results_env, tmp_path, "query", big, "--results", str(demo_results)))
    assert len(shown.stdout.splitlines()) == 1 + 50 and "first 50 rows" in shown.stderr
    every = ok(run_esmpipe(results_env, tmp_path, "query", big, "--results", str(demo_results),
                           "--limit", "0"))
    n = len(every.stdout.splitlines()) - 1
    assert n == 10 * len(ds.dataset(demo_results / "proteins", format="parquet").to_table())
    out = tmp_path / "all.tsv"
    ok(run_esmpipe(results_env, tmp_path, "query", big, "--results", str(demo_results),
                   "--format", "tsv", "--output", str(out)))
    assert len(out.read_text().splitlines()) == n + 1
    limited = tmp_path / "some.parquet"
    ok(run_esmpipe(results_env, tmp_path, "query", big, "--results", str(demo_results),
                   "--format", "parquet", "--output", str(limited), "--limit", "7"))
    assert pq.read_table(limited).num_rows == 7


def test_api_returns_what_the_commands_return(res, demo_results, results_env, tmp_path):
    sql = "SELECT sample, protein_id, length FROM records ORDER BY sample, protein_id"
    cli = rows(ok(run_esmpipe(results_env, tmp_path, "query", sql, "--results",
                              str(demo_results), "--format", "tsv")).stdout)
    api = res.query(sql)
    assert [(r["sample"], r["protein_id"], int(r["length"])) for r in cli] == \
        list(zip(api["sample"], api["protein_id"], api["length"], strict=True))
    for fmt in ("pdb", "cif"):
        out = tmp_path / f"one-{fmt}"
        ids = tmp_path / "one.txt"
        ids.write_text("sample_a/a1\n")
        ok(run_esmpipe(results_env, tmp_path, "export", "--results", str(demo_results),
                       "--ids", str(ids), "--format", fmt, "--output", str(out)))
        digest = res.resolve("a1")
        assert (out / f"{digest}.{fmt}").read_text() == res.structure("a1", format=fmt)
