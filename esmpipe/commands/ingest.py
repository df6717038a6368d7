"""`esmpipe ingest`: one sample's FASTA (proteins or contigs) to a proteins table.

Every input record is accounted for, never silently lost:
- a protein sample gives one proteins row per record;
- a contigs sample gives one proteins row per gene called, and a contigs table
  (`<output stem>.contigs.parquet` beside the output, CONTIGS_SCHEMA) with one
  row per record: its length, the genes called on it and a status (`ok`,
  `no_genes`, `protein_in_contigs`, `empty`, `invalid_characters`, `gapped`).
Each proteins row carries the normalised sequence, its status
(`esmpipe.io.sequences`), and its `seq_hash` when the status is "ok".

Records of the wrong type (a DNA record in a protein sample: status
`nucleotide_sequence`; a protein in a contigs sample: `protein_in_contigs`)
keep their row with that status. When at least half of a file's non-empty
records are of the wrong type the file as a whole was declared wrongly, and
ingest fails with an error that names the file, a record and the fix, unless
`--allow-type-mismatch` asks for the statuses only.

Duplicate ids inside one file keep their rows: the first occurrence keeps the
id, later ones get the suffix ".dup2", ".dup3", ... (and a warning is logged),
so `(sample, protein_id)` and `(sample, contig)` stay unique keys while the
original id remains recognisable. A repeated contig's genes are named after
the renamed contig (`c1.dup2_1`, ...).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from esmpipe import __version__
from esmpipe.cli import UserError
from esmpipe.io.fasta import FastaError, FastaRecord, read_fasta
from esmpipe.io.sequences import (
    classify_contig,
    looks_like_nucleotide,
    normalise_sequence,
    seq_hash,
)
from esmpipe.io.tables import (
    CONTIGS_SCHEMA,
    PROTEINS_SCHEMA,
    atomic_path,
    file_sha256,
    schema_with_metadata,
    write_parquet_atomic,
)
from esmpipe.status import NO_GENES, NUCLEOTIDE_SEQUENCE, OK, PROTEIN_IN_CONTIGS

if TYPE_CHECKING:
    from esmpipe.io.genes import CalledGene

log = logging.getLogger(__name__)

# Rows per record batch (and Parquet row group) of the proteins table.
BATCH_ROWS = 65_536

# numpy dtypes of the integer columns of PROTEINS_SCHEMA / CONTIGS_SCHEMA.
_INTEGER_DTYPES = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32,
                   pa.int64(): np.int64}  # fmt: skip
_INT32_MAX = 2**31 - 1
# Strings joined and encoded at a time when a column is built (see _utf8).
_PIECE_ROWS = 256

# A file whose non-empty records are of the wrong type at least this often was
# declared with the wrong type in the sample sheet (see the module docstring).
TYPE_MISMATCH_FILE_FRACTION = 0.5


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
    parser.add_argument(
        "--contigs-output",
        type=Path,
        default=None,
        help="contigs table of a contigs sample (default: <output stem>.contigs.parquet)",
    )
    parser.add_argument(
        "--allow-type-mismatch",
        action="store_true",
        help="keep going when most records are of the other type (they keep their rows "
        "with status nucleotide_sequence or protein_in_contigs)",
    )
    parser.set_defaults(func=run)


def contigs_path(output: str | Path) -> Path:
    """The contigs table beside an ingest output: `work/ingest/S.parquet` ->
    `work/ingest/S.contigs.parquet`."""
    output = Path(output)
    stem = output.name[: -len(".parquet")] if output.name.endswith(".parquet") else output.name
    return output.with_name(f"{stem}.contigs.parquet")


class UniqueIds:
    """Renames repeated ids `<id>.dup<k>`, k the occurrence (bumped past ids already taken)."""

    def __init__(self) -> None:
        # Every id given out -> how often it came in as an input id (0: only given out as
        # a rename). One dict: at millions of records this set is ingest's main memory.
        self._taken: dict[str, int] = {}
        self.renamed = 0

    def __call__(self, name: str) -> str:
        seen = self._taken.get(name)
        if seen is None:
            self._taken[name] = 1
            return name
        self._taken[name] = seen + 1
        k = max(seen + 1, 2)
        while f"{name}.dup{k}" in self._taken:
            k += 1
        renamed = f"{name}.dup{k}"
        self._taken[renamed] = 0
        self.renamed += 1
        return renamed


@dataclass
class Mismatch:
    """Records of the wrong type in one file, and the first of them (for the error)."""

    count: int = 0
    non_empty: int = 0
    first: tuple[int, str, str] | None = None  # (record number, id, sequence start)

    def see(self, number: int, record_id: str, sequence: str, mismatched: bool) -> None:
        if sequence:
            self.non_empty += 1
        if mismatched:
            self.count += 1
            if self.first is None:
                self.first = (number, record_id, sequence[:30])

    def whole_file(self) -> bool:
        return self.count > 0 and self.count >= TYPE_MISMATCH_FILE_FRACTION * self.non_empty


class Rows:
    """Rows of `schema` gathered as Python values and handed to `emit` as record batches
    of `BATCH_ROWS` rows, so that memory holds one batch, not the sample.

    `lengths` names, for a string column, the column that holds its values' lengths
    (`{"sequence": "length"}`): building the column then need not visit each string."""

    def __init__(self, schema: pa.Schema, emit: Callable[[pa.RecordBatch], object],
                 lengths: dict[str, str] | None = None) -> None:  # fmt: skip
        self.schema = schema
        self._emit = emit
        self._columns: list[list] = [[] for _ in schema]
        self._lengths = {schema.get_field_index(k): schema.get_field_index(v)
                         for k, v in (lengths or {}).items()}  # fmt: skip

    def append(self, values: tuple) -> None:
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)
        if len(self._columns[0]) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._columns[0]:
            columns = self._columns
            lengths = {i: columns[j] for i, j in self._lengths.items()}
            arrays = [column_array(c, f.type, lengths.get(i))
                      for i, (c, f) in enumerate(zip(columns, self.schema, strict=True))]
            self._emit(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self._columns = [[] for _ in self.schema]


def column_array(values: list, arrow_type: pa.DataType, lengths: list[int] | None = None
                 ) -> pa.Array:  # fmt: skip
    """`pa.array(values, type=arrow_type)` for the column types of the ingest tables
    (strings, large strings, integers; None is null), built from numpy buffers.
    `lengths`: the values' lengths in characters, where already known (see _utf8).

    NOTE: `pa.array` (and `from_pylist` / `from_pydict`) imports pandas on its first
    call, to ask whether the values are a pandas object: 0.28 CPU s, half of what a
    one-record ingest job costs, paid by each of a cohort's thousands of jobs.
    `pa.Array.from_buffers` imports nothing."""
    text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if not text and arrow_type not in _INTEGER_DTYPES:
        return pa.array(values, type=arrow_type)  # no ingest column yet (imports pandas)
    n = len(values)
    if n and values[0] is None and values.count(None) == n:
        return pa.nulls(n, arrow_type)
    try:
        return _from_buffers(values, arrow_type, text, lengths)
    except TypeError:  # a None among the values (anything else fails again below)
        pass
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    fill = "" if text else 0
    values = [fill if v is None else v for v in values]
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return _from_buffers(values, arrow_type, text, None, validity, n - int(valid.sum()))


def _from_buffers(values: list, arrow_type: pa.DataType, text: bool, lengths: list[int] | None,
                  validity: pa.Buffer | None = None, nulls: int = 0) -> pa.Array:  # fmt: skip
    """The array of `values` (no None among them; `validity` marks the nulls)."""
    n = len(values)
    if not text:
        data = np.array(values, dtype=_INTEGER_DTYPES[arrow_type])
        return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(data)],
                                     null_count=nulls)  # fmt: skip
    offsets, data = _utf8(values, lengths)
    if pa.types.is_string(arrow_type):
        if offsets[-1] > _INT32_MAX:
            raise ValueError(f"{offsets[-1]} bytes of {arrow_type} in one batch (at most "
                             f"{_INT32_MAX}); use large_string")  # fmt: skip
        offsets = offsets.astype(np.int32)
    buffers = [validity, pa.py_buffer(offsets), data]
    return pa.Array.from_buffers(arrow_type, n, buffers, null_count=nulls)


def _utf8(values: list[str], lengths: list[int] | None) -> tuple[np.ndarray, pa.Buffer]:
    """Offsets (int64, one more than values) and UTF-8 bytes of `values`.

    The bytes go piece by piece into memory of pyarrow's pool, which keeps it from
    batch to batch: a batch's sequences are tens of MB, and fresh pages from the
    system for a joined str and then its bytes, every batch, cost 4x what `pa.array`
    takes. `lengths`, the values' lengths in characters where the caller knows them,
    saves visiting each string; they are checked only as sums over pieces."""
    n = len(values)
    if lengths is None:
        sizes = np.fromiter(map(len, values), dtype=np.int64, count=n)
    else:
        sizes = np.array(lengths, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = pa.allocate_buffer(int(offsets[-1]))
    view = memoryview(data).cast("B")  # pyarrow exports signed bytes ("b")
    for start in range(0, n, _PIECE_ROWS):
        end = min(start + _PIECE_ROWS, n)
        piece = "".join(values[start:end])
        if not piece.isascii() or len(piece) != offsets[end] - offsets[start]:
            break  # characters are not bytes here
        view[offsets[start]:offsets[end]] = piece.encode("ascii")
    else:
        return offsets, data
    encoded = [v.encode() for v in values]
    offsets[1:] = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n))
    return offsets, pa.py_buffer(b"".join(encoded))


class ProteinsBuilder:
    """Rows of the proteins table: normalise, hash and de-duplicate ids row by row."""

    def __init__(self, sample: str, emit: Callable[[pa.RecordBatch], object]) -> None:
        self.sample = sample
        self.rows = Rows(PROTEINS_SCHEMA, emit, lengths={"sequence": "length"})
        self.statuses: Counter = Counter()
        self.ids = UniqueIds()

    def add(self, protein_id: str, raw: str, *, check_nucleotide: bool = False,
            gene: CalledGene | None = None) -> tuple[str, str]:  # fmt: skip
        """Append one row; returns (normalised sequence, status)."""
        sequence, status = normalise_sequence(raw)
        if check_nucleotide and status == OK and looks_like_nucleotide(sequence):
            status = NUCLEOTIDE_SEQUENCE
        self.statuses[status] += 1
        where = (None,) * 5 if gene is None else (
            gene.contig, gene.start, gene.end, gene.strand, gene.partial)  # fmt: skip
        self.rows.append((self.sample, self.ids(protein_id),
                          seq_hash(sequence) if status == OK else None, sequence, len(sequence),
                          status, *where))  # fmt: skip
        return sequence, status


class ContigsBuilder:
    """Rows of the contigs table, kept in memory as record batches (a few dozen bytes
    a contig)."""

    def __init__(self, sample: str) -> None:
        self.sample = sample
        self.batches: list[pa.RecordBatch] = []
        self.rows = Rows(CONTIGS_SCHEMA, self.batches.append)
        self.statuses: Counter = Counter()

    def add(self, contig: str, length: int, genes: int, status: str) -> None:
        self.rows.append((self.sample, contig, length, genes, status))
        self.statuses[status] += 1

    def table(self) -> pa.Table:
        self.rows.flush()
        return pa.Table.from_batches(self.batches, schema=CONTIGS_SCHEMA)


def ingest_proteins(proteins: ProteinsBuilder, records: Iterable[FastaRecord]) -> Mismatch:
    """A protein sample: one row per record, DNA/RNA records as `nucleotide_sequence`."""
    mismatch = Mismatch()
    for number, record in enumerate(records, start=1):
        sequence, status = proteins.add(record.id, record.sequence, check_nucleotide=True)
        mismatch.see(number, record.id, sequence, status == NUCLEOTIDE_SEQUENCE)
    return mismatch


def ingest_contigs(
    proteins: ProteinsBuilder, records: Iterable[FastaRecord]
) -> tuple[ContigsBuilder, Mismatch, int]:
    """A contigs sample: genes called on every valid contig; one contigs row per record.

    Returns (contigs, mismatch, renamed contig ids)."""
    from esmpipe.io.genes import GeneCaller

    caller = GeneCaller()
    contigs = ContigsBuilder(proteins.sample)
    mismatch = Mismatch()
    contig_ids = UniqueIds()
    for number, record in enumerate(records, start=1):
        contig = contig_ids(record.id)
        dna, status = classify_contig(record.sequence)
        mismatch.see(number, record.id, dna, status == PROTEIN_IN_CONTIGS)
        genes = caller.call(contig, dna, sample=proteins.sample) if status == OK else []
        for gene in genes:
            proteins.add(gene.protein_id, gene.sequence, gene=gene)
        if status == OK and not genes:
            status = NO_GENES
        contigs.add(contig, len(dna), len(genes), status)
    return contigs, mismatch, contig_ids.renamed


def _mismatch_error(args: argparse.Namespace, mismatch: Mismatch) -> UserError:
    number, record_id, start = mismatch.first  # type: ignore[misc]
    if args.type == "protein":
        found, status, other = "nucleotide (DNA/RNA) sequences", NUCLEOTIDE_SEQUENCE, "contigs"
    else:
        found, status, other = "protein sequences, not contigs", PROTEIN_IN_CONTIGS, "protein"
    return UserError(
        f"{args.input}: {mismatch.count} of {mismatch.non_empty} non-empty records are "
        f"{found} (first: record {number}, {record_id!r}, {start!r}...), but sample "
        f"{args.sample!r} is declared as type {args.type}. If the file holds {other}, declare "
        f"it as type {other} in the sample sheet; to keep going with these records marked "
        f"'{status}', pass --allow-type-mismatch."
    )


def _records(path: Path) -> Iterator[FastaRecord]:
    try:
        yield from read_fasta(path)
    except FastaError as err:
        raise UserError(str(err)) from None


def _counts(statuses: Counter) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())) or "no records"


def _finish(draft: Path, path: Path, metadata: dict) -> int:
    """Copy the draft into `path`, row group by row group, with the final metadata.

    The metadata (status counts above all) is known only once every record is read,
    and Parquet keeps it in the schema written first; copying row groups keeps
    memory at one batch however large the sample."""
    schema = schema_with_metadata(PROTEINS_SCHEMA, metadata)
    rows = 0
    with (
        pq.ParquetFile(draft) as source,
        pq.ParquetWriter(path, schema, compression="zstd") as writer,
    ):
        for i in range(source.num_row_groups):
            group = source.read_row_group(i)
            writer.write_table(group.replace_schema_metadata(schema.metadata))
            rows += group.num_rows
    return rows


def _warn_mismatch(args: argparse.Namespace, mismatch: Mismatch) -> None:
    if mismatch.whole_file():
        if not args.allow_type_mismatch:
            raise _mismatch_error(args, mismatch)
        log.warning("%s", _mismatch_error(args, mismatch))
    elif mismatch.count:
        log.warning(
            "%s: %d records of the wrong type for a %s sample (status %s), first: record "
            "%d (%r)", args.input, mismatch.count, args.type,
            NUCLEOTIDE_SEQUENCE if args.type == "protein" else PROTEIN_IN_CONTIGS,
            *mismatch.first[:2],  # type: ignore[index]
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if not args.sample:
        raise UserError("--sample must not be empty")
    contigs_output = args.contigs_output or contigs_path(args.output)
    if contigs_output == args.output:
        raise UserError(f"--contigs-output {contigs_output} is the same file as --output")
    contigs = None
    renamed_contigs = 0
    with atomic_path(args.output) as tmp:
        draft = tmp.with_name(f"{tmp.name}.draft")
        try:
            with pq.ParquetWriter(draft, PROTEINS_SCHEMA, compression="zstd") as writer:
                proteins = ProteinsBuilder(args.sample, writer.write_batch)
                if args.type == "protein":
                    mismatch = ingest_proteins(proteins, _records(args.input))
                else:
                    contigs, mismatch, renamed_contigs = ingest_contigs(
                        proteins, _records(args.input)
                    )
                proteins.rows.flush()
            _warn_mismatch(args, mismatch)
            renamed = proteins.ids.renamed
            if renamed:
                log.warning(
                    "%s: %d duplicate protein ids renamed with a .dupN suffix", args.input,
                    renamed,
                )  # fmt: skip
            if renamed_contigs:
                log.warning(
                    "%s: %d duplicate contig ids renamed with a .dupN suffix", args.input,
                    renamed_contigs,
                )  # fmt: skip
            metadata = {
                "esmpipe_version": __version__,
                "sample": args.sample,
                "type": args.type,
                "input": str(args.input),
                "input_sha256": file_sha256(args.input),
                "status_counts": dict(sorted(proteins.statuses.items())),
                "duplicate_ids_renamed": renamed,
            }
            if contigs is not None:
                import pyrodigal

                metadata["gene_caller"] = f"pyrodigal {pyrodigal.__version__} (meta mode)"
                contig_metadata = {
                    **metadata,
                    "status_counts": dict(sorted(contigs.statuses.items())),
                    "duplicate_ids_renamed": renamed_contigs,
                }
                metadata["contigs_output"] = str(contigs_output)
                metadata["contig_status_counts"] = contig_metadata["status_counts"]
                # Written first: an existing proteins table implies its contigs table.
                write_parquet_atomic(contigs.table(), contigs_output, contig_metadata)
            elif args.contigs_output is None and contigs_output.exists():
                # A sample re-declared from contigs to protein: its old contigs table
                # would otherwise be gathered as if it still described this sample.
                log.warning("%s: removing the contigs table of an earlier contigs run",
                            contigs_output)  # fmt: skip
                contigs_output.unlink()
            rows = _finish(draft, tmp, metadata)
        finally:
            draft.unlink(missing_ok=True)
    if contigs is not None:
        log.info("%s: %d contigs (%s) -> %s", args.sample, sum(contigs.statuses.values()),
                 _counts(contigs.statuses), contigs_output)  # fmt: skip
    log.info("%s: %d rows (%s) -> %s", args.sample, rows, _counts(proteins.statuses),
             args.output)  # fmt: skip
    return 0
