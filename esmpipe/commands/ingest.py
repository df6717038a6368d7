"""`esmpipe ingest`: one sample's FASTA (proteins or contigs) to a proteins table.

Every input record gives one row, never fewer: a protein record, or a gene
called on a contig. Each row carries the normalised sequence, its status
(`esmpipe.io.sequences`), and its `seq_hash` when the status is "ok".

Duplicate protein ids inside one file keep their rows: the first occurrence
keeps the id, later ones get the suffix ".dup2", ".dup3", ... (and a warning
is logged), so `(sample, protein_id)` stays a unique key of the table while
the original id remains recognisable.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from esmpipe import __version__
from esmpipe.cli import UserError
from esmpipe.io.fasta import FastaError, read_fasta
from esmpipe.io.sequences import normalise_sequence, seq_hash
from esmpipe.io.tables import PROTEINS_SCHEMA, file_sha256, write_parquet_atomic
from esmpipe.status import OK

log = logging.getLogger(__name__)

_COLUMNS = PROTEINS_SCHEMA.names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="read one sample's FASTA (proteins, or contigs to call genes on) into a table",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--sample", required=True, help="sample name written to every row")
    parser.add_argument(
        "--type",
        required=True,
        choices=("protein", "contigs"),
        help="protein: records are proteins; contigs: call genes (Prodigal meta mode)",
    )
    parser.add_argument("--input", required=True, type=Path, help="FASTA, plain or gzip")
    parser.add_argument("--output", required=True, type=Path, help="output Parquet file")
    parser.set_defaults(func=run)


def _protein_rows(path: Path) -> Iterator[dict]:
    for record in read_fasta(path):
        yield {"protein_id": record.id, "raw": record.sequence}


def _gene_rows(path: Path) -> Iterator[dict]:
    from esmpipe.io.genes import call_genes

    for gene in call_genes(path):
        yield {
            "protein_id": gene.protein_id,
            "raw": gene.sequence,
            "contig": gene.contig,
            "start": gene.start,
            "end": gene.end,
            "strand": gene.strand,
            "partial": gene.partial,
        }


def build_table(sample: str, rows: Iterable[dict]) -> tuple[pa.Table, Counter, int]:
    """Normalise, hash and de-duplicate ids; returns (table, status counts, renamed ids)."""
    columns: dict[str, list] = {name: [] for name in _COLUMNS}
    seen: set[str] = set()
    occurrences: Counter = Counter()
    statuses: Counter = Counter()
    renamed = 0
    for row in rows:
        protein_id = row["protein_id"]
        occurrences[protein_id] += 1
        if protein_id in seen:
            k = occurrences[protein_id]
            while f"{protein_id}.dup{k}" in seen:
                k += 1
            protein_id = f"{protein_id}.dup{k}"
            renamed += 1
        seen.add(protein_id)
        sequence, status = normalise_sequence(row["raw"])
        statuses[status] += 1
        columns["sample"].append(sample)
        columns["protein_id"].append(protein_id)
        columns["seq_hash"].append(seq_hash(sequence) if status == OK else None)
        columns["sequence"].append(sequence)
        columns["length"].append(len(sequence))
        columns["status"].append(status)
        for name in ("contig", "start", "end", "strand", "partial"):
            columns[name].append(row.get(name))
    return pa.Table.from_pydict(columns, schema=PROTEINS_SCHEMA), statuses, renamed


def run(args: argparse.Namespace) -> int:
    if not args.sample:
        raise UserError("--sample must not be empty")
    rows = _protein_rows(args.input) if args.type == "protein" else _gene_rows(args.input)
    try:
        table, statuses, renamed = build_table(args.sample, rows)
    except FastaError as err:
        raise UserError(str(err)) from None
    if renamed:
        log.warning(
            "%s: %d duplicate protein ids renamed with a .dupN suffix", args.input, renamed
        )
    metadata = {
        "esmpipe_version": __version__,
        "sample": args.sample,
        "type": args.type,
        "input": str(args.input),
        "input_sha256": file_sha256(args.input),
        "status_counts": dict(sorted(statuses.items())),
        "duplicate_ids_renamed": renamed,
    }
    if args.type == "contigs":
        import pyrodigal

        metadata["gene_caller"] = f"pyrodigal {pyrodigal.__version__} (meta mode)"
    write_parquet_atomic(table, args.output, metadata)
    log.info(
        "%s: %d rows (%s) -> %s",
        args.sample,
        table.num_rows,
        ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())) or "no records",
        args.output,
    )
    return 0
