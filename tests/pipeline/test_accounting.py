"""The accounting invariant on a messy cohort, through the command line.

ingest -> shard -> embed (tiny random ESM-2) -> gather, on protein and contig samples
with empty files, empty records, duplicates within and across samples and every status
ingest and the embed stage can give. Every record of every input file must come out
exactly once: in results/proteins (protein samples) or in results/contigs (contig
samples, whose genes are the proteins rows), and per sample the statuses must add up
to the records.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.commands.ingest import contigs_path
from esmpipe.io.fasta import read_fasta
from esmpipe.io.tables import read_metadata

MAX_LENGTH = 400  # embed stage limit; longer sequences are too_long_for_embed

TRX = ("SDKIIHLTDDSFDTDVLKADGAILVDFWAEWCGPCKMIAPILDEIADEYQGKLTVAKLNIDQNPGTAPKYGIRGIPTLLLFKNG"
       "EVAASKVGALSKGQLKEFLDANLA")
UBQ = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
DNA = "ATGAGCGATAAAATTATTCACCTGACTGACGACAGTTTTGACACGGATGTACTCAAAGCGGACGGGGCGATCCTCGTC"


def _contig_pieces() -> list[str]:
    data = Path(str(importlib.resources.files("pyrodigal.tests") / "data"))
    (record,) = read_fasta(data / "SRR492066.fna.gz")
    return [record.sequence[i * 5000 : (i + 1) * 5000] for i in range(3)]


def _fasta(records: list[tuple[str, str]]) -> str:
    return "".join(f">{name} some description\n{sequence}\n" for name, sequence in records)


def _cohort(root: Path) -> dict[str, tuple[str, Path]]:
    """sample -> (type, FASTA path)."""
    c1, c2, c3 = _contig_pieces()
    inputs = root / "inputs"
    inputs.mkdir()
    files = {
        "p1": ("protein", "p1.faa.gz", [
            ("trx", TRX.lower() + "*"),  # lowercase with Prodigal's stop: ok
            ("ubq", UBQ),  # also in p2
            ("empty1", ""),
            ("trx", TRX),  # duplicate id and sequence within the sample
            ("digits", "MKV1LLA"),
            ("aligned", "MKV--LLA"),
            ("stop", "MKV*LLA*"),
            ("huge", ("MKVLLAGHE" * 60)[:MAX_LENGTH + 50]),
            ("gene", DNA),  # nucleotide in a protein sample
            ("short", "MKVL"),
        ]),
        "p2": ("protein", "p2.faa", [
            ("u", UBQ),
            ("u", UBQ),
            ("t2", TRX[:60]),
            ("e", ""),
        ]),
        "p_empty": ("protein", "p_empty.faa", []),  # a file of zero bytes
        "c1": ("contigs", "c1.fna.gz", [
            ("k1", c1.lower()),
            ("k2", c2),
            ("tiny", "ACGTTAGCATCGATCGATCGGGCTAACGT"),  # no gene on it
            ("blank", ""),
            ("prot", TRX + "*"),  # a protein in a contigs sample
            ("k1", c1),  # duplicate contig id within the sample
            ("gaps", "ACGT--ACGTACGT"),
            ("odd", "ACGT9ACGT"),
        ]),
        "c2": ("contigs", "c2.fna", [
            ("x1", c1),  # the same contig as c1's k1: shared genes across samples
            ("x3", c3),
            ("x4", "ACGTACGATCGATCAGCTAGCATCGACTAGCA"),
        ]),
        "c_empty": ("contigs", "c_empty.fna", []),
    }
    cohort = {}
    for sample, (kind, name, records) in files.items():
        path = inputs / name
        data = _fasta(records).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        cohort[sample] = (kind, path)
    return cohort


def _headers(path: Path) -> list[str]:
    """Record ids counted from the raw bytes, independently of the FASTA reader."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [line[1:].split()[0] for line in data.decode().splitlines() if line.startswith(">")]


def _esmpipe(*args: str) -> None:
    assert main(list(args)) == 0, args


def _original(name: str) -> str:
    return re.sub(r"\.dup\d+$", "", name)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_esm2: Path) -> dict:
    root = tmp_path_factory.mktemp("accounting")
    cohort = _cohort(root)
    ingest = []
    for sample, (kind, path) in cohort.items():
        out = root / "work" / "ingest" / f"{sample}.parquet"
        _esmpipe("ingest", "--sample", sample, "--type", kind, "--input", str(path),
                 "--output", str(out))  # fmt: skip
        ingest.append(str(out))
    plan = root / "work" / "plan" / "embed"
    cache = root / "cache" / "embed"
    settings = json.dumps({"stage": "embed", "model": str(tiny_esm2)})
    _esmpipe("shard", "--stage", "embed", "--ingest", *ingest, "--cache-dir", str(cache),
             "--output-dir", str(plan), "--settings", settings, "--shard-size", "3",
             "--cost-exponent", "1", "--max-length", str(MAX_LENGTH))  # fmt: skip
    shards = sorted((plan / "shards").glob("*.parquet"))
    assert len(shards) > 1
    for shard in shards:
        _esmpipe("embed", "--model", str(tiny_esm2), "--input", str(shard),
                 "--output", str(cache / shard.name), "--max-length", str(MAX_LENGTH))  # fmt: skip
    status = root / "work" / "status" / "embeddings.parquet"
    _esmpipe("gather", "--table", "embeddings", "--plan", str(plan),
             "--output", str(root / "results" / "embeddings"), "--status-output", str(status))
    _esmpipe("gather", "--table", "proteins", "--ingest", *ingest, "--status", f"embed={status}",
             "--output", str(root / "results" / "proteins"))  # fmt: skip
    ingest_list = root / "work" / "ingest" / "list.txt"
    ingest_list.write_text("".join(f"{path}\n" for path in ingest))
    _esmpipe("gather", "--table", "contigs", "--ingest-list", str(ingest_list),
             "--output", str(root / "results" / "contigs"))  # fmt: skip
    return {"root": root, "cohort": cohort, "ingest": ingest}


def _proteins(run: dict) -> list[dict]:
    return ds.dataset(run["root"] / "results" / "proteins", format="parquet").to_table().to_pylist()


def _contigs(run: dict, sample: str) -> list[dict]:
    """The sample's rows of results/contigs (checked against its ingest contigs file)."""
    table = ds.dataset(run["root"] / "results" / "contigs", format="parquet").to_table()
    rows = sorted((r for r in table.to_pylist() if r["sample"] == sample),
                  key=lambda r: r["contig"])  # fmt: skip
    path = contigs_path(run["root"] / "work" / "ingest" / f"{sample}.parquet")
    assert rows == sorted(pq.read_table(path).to_pylist(), key=lambda r: r["contig"])
    return rows


def test_every_protein_record_appears_exactly_once(run: dict) -> None:
    proteins = _proteins(run)
    assert len({(r["sample"], r["protein_id"]) for r in proteins}) == len(proteins)
    for sample, (kind, path) in run["cohort"].items():
        if kind != "protein":
            continue
        rows = [r for r in proteins if r["sample"] == sample]
        assert sorted(_original(r["protein_id"]) for r in rows) == sorted(_headers(path)), sample
        assert not contigs_path(run["root"] / "work" / "ingest" / f"{sample}.parquet").exists()


def test_every_contig_record_appears_exactly_once(run: dict) -> None:
    proteins = _proteins(run)
    total = ds.dataset(run["root"] / "results" / "contigs", format="parquet").count_rows()
    assert total == sum(len(_headers(p)) for k, p in run["cohort"].values() if k == "contigs")
    for sample, (kind, path) in run["cohort"].items():
        if kind != "contigs":
            continue
        contigs = _contigs(run, sample)
        assert sorted(_original(r["contig"]) for r in contigs) == sorted(_headers(path)), sample
        assert len({r["contig"] for r in contigs}) == len(contigs)
        # Genes called are exactly the sample's proteins rows, contig by contig.
        genes = Counter(r["contig"] for r in proteins if r["sample"] == sample)
        assert genes == Counter({r["contig"]: r["genes"] for r in contigs if r["genes"]})
        assert all((r["genes"] > 0) == (r["status"] == "ok") for r in contigs)


def test_status_counts_add_up_per_sample(run: dict) -> None:
    proteins = _proteins(run)
    for sample, (kind, path) in run["cohort"].items():
        ingest = Path(run["root"] / "work" / "ingest" / f"{sample}.parquet")
        if kind == "protein":
            counts = Counter(r["status"] for r in proteins if r["sample"] == sample)
            ingest_counts = Counter(r["status"] for r in pq.read_table(ingest).to_pylist())
            assert read_metadata(ingest)["status_counts"] == dict(ingest_counts)
        else:
            counts = Counter(r["status"] for r in _contigs(run, sample))
            meta = read_metadata(contigs_path(ingest))
            assert meta["status_counts"] == dict(counts)
        assert sum(counts.values()) == len(_headers(path)), sample


def test_every_status_is_provoked(run: dict) -> None:
    proteins = Counter(r["status"] for r in _proteins(run))
    assert set(proteins) == {"ok", "empty", "invalid_characters", "gapped", "internal_stop",
                             "too_long_for_embed", "nucleotide_sequence"}  # fmt: skip
    contigs = Counter(r["status"] for s, (k, _) in run["cohort"].items() if k == "contigs"
                      for r in _contigs(run, s))  # fmt: skip
    assert set(contigs) == {"ok", "no_genes", "empty", "protein_in_contigs", "gapped",
                            "invalid_characters"}  # fmt: skip
    for sample in ("p_empty", "c_empty"):
        assert not [r for r in _proteins(run) if r["sample"] == sample]
    assert _contigs(run, "c_empty") == []


def test_shared_sequences_are_embedded_once(run: dict) -> None:
    proteins = _proteins(run)
    embeddings = ds.dataset(run["root"] / "results" / "embeddings", format="parquet").to_table()
    hashes = embeddings["seq_hash"].to_pylist()
    assert len(hashes) == len(set(hashes))
    ok = {r["seq_hash"] for r in proteins if r["status"] == "ok"}
    assert ok == set(hashes)
    # The same sequence in two samples (p1/p2; c1's k1 and c2's x1) is one hash.
    by_sample: dict[str, set[str]] = {}
    for r in proteins:
        if r["seq_hash"]:
            by_sample.setdefault(r["sample"], set()).add(r["seq_hash"])
    assert by_sample["p1"] & by_sample["p2"]
    assert by_sample["c1"] & by_sample["c2"]
    # Only records ingest found valid have a hash (too long ones were valid proteins).
    assert all((r["seq_hash"] is None) == (r["status"] not in ("ok", "too_long_for_embed"))
               for r in proteins)  # fmt: skip
