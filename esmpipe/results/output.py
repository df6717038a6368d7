"""Writing query results: streamed from DuckDB, never the whole result in memory.

To a file, DuckDB's `COPY` writes csv/tsv/json/parquet itself (through a temporary
file, renamed into place). To the terminal, rows are fetched in Arrow batches
and written as they come; the fixed-width `table` rendering stops at a row limit.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from esmpipe.io.tables import atomic_path

TEXT_FORMATS = ("table", "tsv", "csv", "json")
COPY_OPTIONS = {
    "csv": "FORMAT csv, HEADER true",
    "tsv": "FORMAT csv, HEADER true, DELIMITER '\t'",
    "json": "FORMAT json",
    "parquet": "FORMAT parquet, COMPRESSION zstd",
}
BATCH_ROWS = 10000
TABLE_MAX_WIDTH = 60


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def copy_to(con: duckdb.DuckDBPyConnection, sql: str, fmt: str, output: str | os.PathLike,
            metadata: dict | None = None) -> None:
    """`COPY (sql) TO output` in `fmt`, atomically; Parquet gets `metadata` under esmpipe."""
    options = COPY_OPTIONS[fmt]
    if fmt == "parquet" and metadata:
        options += f", KV_METADATA {{esmpipe: {_sql_string(json.dumps(metadata))}}}"
    with atomic_path(output) as tmp:
        con.execute(f"COPY ({sql}) TO {_sql_string(str(tmp))} ({options})")


def _flatten_lists(batch: pa.RecordBatch) -> pa.RecordBatch:
    """List columns (e.g. `flags`, `samples`) as comma-joined text, for csv/tsv."""
    arrays, names = [], []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = column.type
        if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and \
                pa.types.is_string(kind.value_type):
            column = pc.binary_join(column, ",")
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
                pa.types.is_fixed_size_list(kind):
            column = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()],
                              pa.string())
        arrays.append(column)
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return "" if fmt in ("csv", "tsv") else "NULL"
    if isinstance(value, float):
        return repr(value) if fmt in ("csv", "tsv") else f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _float32_text(column: pa.Array) -> list:
    """float32 values as their shortest float32 text (50.0032, not 50.00320816040039)."""
    if not pa.types.is_float32(column.type):
        return column.to_pylist()
    import numpy as np

    return [None if v is None else str(np.float32(v)) for v in column.to_pylist()]


def _table_text(names: list[str], rows: list[list[str]], header: bool) -> str:
    """Fixed-width columns, long cells cut to TABLE_MAX_WIDTH with '...'."""
    cut = [[c if len(c) <= TABLE_MAX_WIDTH else c[:TABLE_MAX_WIDTH - 3] + "..." for c in row]
           for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cut]) for i, n in enumerate(names)]
    lines = [" ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))] if header else []
    lines += [" ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cut]
    return "\n".join(lines) + "\n" if lines else ""


def write_batches(batches: Iterator[pa.RecordBatch], fmt: str, out: IO[str],
                  *, limit: int | None = None) -> tuple[int, bool]:
    """Write batches as `fmt` text to `out`, at most `limit` rows; returns (rows written,
    whether more rows came than were written).

    csv/tsv as the csv module writes them (a field holding the separator, a quote or a
    newline is quoted), json one object a line, `table` fixed-width per batch with the
    header once. No pandas: the commands stay quick to start."""
    written = 0
    header = True
    more = False
    writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    for batch in batches:
        if limit is not None and written + batch.num_rows > limit:
            more = True
            batch = batch.slice(0, limit - written)
        names = batch.schema.names
        if fmt in ("csv", "tsv"):
            batch = _flatten_lists(batch)
        columns = [_float32_text(column) if fmt in ("csv", "tsv") else column.to_pylist()
                   for column in batch.columns]
        rows = list(zip(*columns, strict=True)) if columns else []
        if fmt in ("csv", "tsv"):
            if header:
                writer.writerow(names)
            writer.writerows([[_cell(v, fmt) for v in row] for row in rows])
        elif fmt == "json":
            for row in rows:
                out.write(json.dumps(dict(zip(names, row, strict=True)), default=str) + "\n")
        else:
            out.write(_table_text(names, [[_cell(v, fmt) for v in row] for row in rows],
                                  header))
        header = False
        written += batch.num_rows
        if more:
            break
    return written, more


def write_relation(rel: duckdb.DuckDBPyRelation, fmt: str, *, limit: int | None = None,
                   out: IO[str] | None = None) -> tuple[int, bool]:
    """Stream a relation as text to `out` (stdout); returns (rows written, more left)."""
    out = out if out is not None else sys.stdout
    if limit is not None:
        rel = rel.limit(limit + 1)
    reader = rel.to_arrow_reader(BATCH_ROWS)
    try:
        return write_batches(iter(reader), fmt, out, limit=limit)
    finally:
        reader.close()


def render(rel: duckdb.DuckDBPyRelation, fmt: str, *, limit: int | None = None) -> str:
    buffer = io.StringIO()
    write_relation(rel, fmt, limit=limit, out=buffer)
    return buffer.getvalue()


def write_fasta(batches: Iterator[pa.RecordBatch], out: IO[str], *,
                describe: tuple[str, ...] = ()) -> int:
    """FASTA of batches with `sample`, `protein_id`, `sequence` columns: header
    `>SAMPLE/PROTEIN_ID key=value ...` for the `describe` columns, 60 residues a line."""
    n = 0
    for batch in batches:
        rows = batch.to_pydict()
        for i in range(batch.num_rows):
            name = f"{rows['sample'][i]}/{rows['protein_id'][i]}"
            name = " ".join(name.split())  # a record id never breaks the header line
            fields = []
            for key in describe:
                value = rows[key][i]
                if isinstance(value, float):
                    value = f"{value:.6g}"
                elif isinstance(value, list):
                    value = ",".join(map(str, value)) or "-"
                fields.append(f"{key}={value}")
            out.write(">" + " ".join([name, *fields]) + "\n")
            sequence = rows["sequence"][i] or ""
            for start in range(0, len(sequence), 60):
                out.write(sequence[start:start + 60] + "\n")
            n += 1
    return n


def write_fasta_file(batches: Iterator[pa.RecordBatch], output: str | os.PathLike, **kw) -> int:
    with atomic_path(Path(output)) as tmp, open(tmp, "w") as handle:
        return write_fasta(batches, handle, **kw)


def quiet_broken_pipe() -> None:
    """After `| head` closed stdout: point it at /dev/null so the exit flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
