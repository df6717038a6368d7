"""The bundled demo end to end: tables, DuckDB / pyarrow.dataset, `esmpipe query`,
`snakemake --report`, and a re-run after adding a sample that computes only the new
distinct sequences and keeps every earlier file of the gathered tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from esmpipe.io.genes import call_genes

from .runner import copy_run, esmpipe, fasta_records, job_counts, local_run_args, snakemake

pytestmark = pytest.mark.workflow


def table(workdir, name):
    return ds.dataset(workdir / "results" / name, format="parquet").to_table()


def sample_sheet(workdir):
    lines = (workdir / "config" / "demo_samples.tsv").read_text().splitlines()[1:]
    return [line.split("\t") for line in lines if line.strip()]


def expected_records(workdir) -> dict[str, int]:
    counts = {}
    for sample, path, kind in sample_sheet(workdir):
        fasta = workdir / "config" / path
        counts[sample] = fasta_records(fasta) if kind == "protein" else \
            sum(1 for _ in call_genes(fasta))
    return counts


def test_proteins_one_row_per_input_record(demo_run):
    proteins = table(demo_run, "proteins").to_pandas()
    assert proteins.groupby("sample").size().to_dict() == expected_records(demo_run)
    statuses = set(proteins["status"])
    assert {"ok", "empty", "invalid_characters", "too_long_for_fold"} <= statuses
    genes = proteins[proteins["sample"] == "sample_c"]
    assert genes["contig"].notna().all() and set(genes["strand"]) <= {1, -1}
    assert genes["partial"].isin(["00", "10", "01", "11"]).all()
    # The duplicated id of sample_a is kept as its own row.
    assert proteins[proteins["sample"] == "sample_a"]["protein_id"].is_unique


def test_one_result_row_per_distinct_sequence(demo_run):
    config = yaml.safe_load((demo_run / "config" / "demo.yaml").read_text())
    proteins = table(demo_run, "proteins").to_pandas()
    valid = proteins[proteins["seq_hash"].notna()].drop_duplicates("seq_hash")
    embeddings = table(demo_run, "embeddings")
    structures = table(demo_run, "structures")
    assert sorted(embeddings["seq_hash"].to_pylist()) == sorted(valid["seq_hash"])
    foldable = valid[valid["length"] <= config["fold"]["max_length"]]
    assert sorted(structures["seq_hash"].to_pylist()) == sorted(foldable["seq_hash"])
    assert len(foldable) < len(valid)  # the demo has sequences too long to fold

    dim = embeddings.schema.field("embedding").type.list_size
    assert dim > 0
    s = structures.to_pandas()
    assert s["mean_plddt"].between(0, 100).all() and s["ptm"].between(0, 1).all()
    assert (s["plddt"].map(len) == s["length"]).all()
    assert s["pdb"].str.contains("ATOM").all()

    meta = json.loads(pq.read_schema(
        sorted((demo_run / "results" / "structures").glob("*.parquet"))[0]
    ).metadata[b"esmpipe"])
    assert meta["model"].endswith("tiny-esmfold")
    # The cache key: the preset folder's digest, the precision that ran, the engine version.
    assert meta["settings"]["model_identity"].startswith("sha256:")
    assert meta["settings"]["dtype"] == "float32" and "output_version" in meta["settings"]
    assert {"revision", "dtype", "num_recycles"} <= set(meta)


def test_duckdb_reads_the_tables(demo_run):
    con = duckdb.connect()
    results = demo_run / "results"
    n_records, n_folded = con.execute(
        f"SELECT count(*), count(s.seq_hash) FROM read_parquet('{results}/proteins/*.parquet') p "
        f"LEFT JOIN read_parquet('{results}/structures/*.parquet') s USING (seq_hash)"
    ).fetchone()
    assert n_records == sum(expected_records(demo_run).values())
    assert 0 < n_folded < n_records
    dim = con.execute(
        f"SELECT len(embedding) FROM read_parquet('{results}/embeddings/*.parquet') LIMIT 1"
    ).fetchone()[0]
    assert dim > 0


def test_query_command(demo_run, demo_env, tmp_path):
    sql = "SELECT sample, count(*) AS records FROM proteins GROUP BY sample ORDER BY sample"
    result = esmpipe("query", sql, "--results", "results", "--format", "csv",
                     env=demo_env, cwd=demo_run)
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in result.stdout.splitlines()]
    assert rows[0] == ["sample", "records"]
    assert {r[0]: int(r[1]) for r in rows[1:]} == expected_records(demo_run)

    out = tmp_path / "folded.parquet"
    result = esmpipe(
        "query", "SELECT p.sample, p.protein_id, s.mean_plddt, s.ptm FROM proteins p "
        "JOIN structures s USING (seq_hash)", "--results", str(demo_run / "results"),
        "--format", "parquet", "--output", str(out), env=demo_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).num_rows > 0

    result = esmpipe("query", "SELECT * FROM nowhere", "--results", "results",
                     env=demo_env, cwd=demo_run)
    assert result.returncode == 2 and "query failed" in result.stderr


def test_report(demo_run, demo_env):
    counts = (demo_run / "results" / "report" / "counts.tsv").read_text().splitlines()
    header = counts[0].split("\t")
    cohort = dict(zip(header, counts[-1].split("\t"), strict=True))
    assert cohort["sample"] == "cohort"
    assert int(cohort["input_records"]) == sum(expected_records(demo_run).values())
    for key in ("distinct_sequences", "folded", "high_confidence", "skipped_empty"):
        assert key in cohort

    snakemake(demo_run, "--configfile", "config/demo.yaml", "--report", "report.html",
              env=demo_env)
    html = (demo_run / "report.html").read_text()
    for name in ("counts.tsv", "plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png"):
        assert name in html


def cache_parts(workdir):
    return {p.relative_to(workdir) for p in (workdir / "results" / "cache").rglob("*.parquet")}


GATHERED = ("proteins", "embeddings", "structures")


def inodes(workdir) -> dict[str, int]:
    """`<table>/<file>` -> inode, for the gathered tables' files."""
    return {f"{name}/{p.name}": p.stat().st_ino for name in GATHERED
            for p in (workdir / "results" / name).glob("*.parquet")}  # fmt: skip


@dataclass
class AddedSample:
    """The demo run, copied, then run again after sample_d was added to its sheet."""

    workdir: Path
    output: str  # what Snakemake printed
    first: pd.DataFrame  # the proteins table before
    parts: set[Path]  # cache parts before
    inodes: dict[str, int]  # gathered files before


@pytest.fixture(scope="module")
def added_sample(demo_run, demo_env, tmp_path_factory) -> AddedSample:
    # Hard links as in the run: the gathered tables' files are links of work/gathered/.
    workdir = copy_run(demo_run, tmp_path_factory.mktemp("added") / "rerun", hard_links=True)
    before = AddedSample(workdir, "", table(workdir, "proteins").to_pandas(),
                         cache_parts(workdir), inodes(workdir))  # fmt: skip
    with (workdir / "config" / "demo_samples.tsv").open("a") as sheet:
        sheet.write("sample_d\tdemo/extra_sample_d.faa\tprotein\n")
    result = snakemake(workdir, *local_run_args(), env=demo_env)
    before.output = result.stdout + result.stderr
    return before


def test_adding_a_sample_computes_only_new_sequences(added_sample):
    workdir, first, before = added_sample.workdir, added_sample.first, added_sample.parts
    # Only the new sample is ingested and no model is made again.
    jobs = job_counts(added_sample.output)
    assert jobs["ingest"] == 1 and "init_model" not in jobs

    proteins = table(workdir, "proteins").to_pandas()
    old = set(first["seq_hash"].dropna())
    new = set(proteins.loc[proteins["sample"] == "sample_d", "seq_hash"].dropna()) - old
    assert new, "the extra sample brings new sequences"
    fold_limit = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())["fold"][
        "max_length"]
    lengths = dict(zip(proteins["seq_hash"], proteins["length"], strict=True))

    added = cache_parts(workdir) - before
    computed = {"embed": set(), "fold": set()}
    for part in added:
        stage = part.parts[2]
        computed[stage] |= set(pq.read_table(workdir / part)["seq_hash"].to_pylist())
    # The embed/fold jobs of the second run received exactly the new distinct sequences.
    assert computed["embed"] == new
    assert computed["fold"] == {h for h in new if lengths[h] <= fold_limit}
    for part in added:
        stage, key = part.parts[2:4]
        bench = workdir / "logs" / "benchmarks" / stage / key / f"{part.stem}.tsv"
        assert bench.exists()

    assert len(proteins) == len(first) + expected_records(workdir)["sample_d"]
    assert set(table(workdir, "embeddings")["seq_hash"].to_pylist()) == \
        set(proteins["seq_hash"].dropna())


def test_adding_a_sample_keeps_the_old_table_files(added_sample):
    """The re-gathered tables keep every earlier file as it was (the same inode: a hard
    link, no byte rewritten); the only new files hold the new sample's rows and the new
    cache parts' results, and each table still reads as one dataset."""
    workdir, before = added_sample.workdir, added_sample.inodes
    assert {name.split("/")[0] for name in before} == set(GATHERED)
    after = inodes(workdir)
    assert {name: after.get(name) for name in before} == before
    new_parts = {part.stem for part in cache_parts(workdir) - added_sample.parts}
    assert new_parts, "the extra sample brings new cache parts"
    new_files = sorted(set(after) - set(before))
    # <sample>-NNNNN.parquet in proteins, <cache part>-NNNNN.parquet in the others.
    sources = {name: name.split("/")[1].rsplit("-", 1)[0] for name in new_files}
    assert {s for n, s in sources.items() if n.startswith("proteins/")} == {"sample_d"}
    assert {s for n, s in sources.items() if not n.startswith("proteins/")} == new_parts
    # The kept files are still what the next gather reuses.
    for name, inode in after.items():
        table_name, file = name.split("/")
        assert (workdir / "work" / "gathered" / table_name / file).stat().st_ino == inode

    con = duckdb.connect()
    for name in GATHERED:
        folder = workdir / "results" / name
        rows = table(workdir, name).num_rows
        counted = con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')")
        assert counted.fetchone()[0] == rows
        assert rows == sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
    proteins = table(workdir, "proteins")
    assert len(proteins) == len(added_sample.first) + expected_records(workdir)["sample_d"]
    assert set(table(workdir, "embeddings")["seq_hash"].to_pylist()) == \
        set(proteins["seq_hash"].drop_null().to_pylist())
