"""Parquet writers for the cohort-level tables: atomic, streaming, with metadata.

The workflow's outputs are read while other jobs run, so every file is written
under a temporary name in its destination folder and renamed into place; a
reader sees the old file or the new one, never half a file. Run settings go into
the schema metadata under the key `esmpipe`, as JSON, the convention of
`esmpipe.io.tables` (read them back with `esmpipe.io.tables.read_metadata`).
Single files go through `esmpipe.io.tables.write_parquet_atomic` and
`esmpipe.io.tables.atomic_path`; these writers add what the cohort tables need
beyond them: streaming into numbered part files, so a table of structures never
sits in memory, folders replaced whole, and finding the result tables of a
results folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from esmpipe.io.tables import atomic_path, read_metadata, schema_with_metadata, umask

RESULT_TABLES = ("proteins", "structures", "embeddings")
STAGE_TABLES = {"embed": "embeddings", "fold": "structures"}


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    A reader sees the old folder or the complete new one; a failure leaves the old
    one as it was. (Only the instant between the two renames shows no folder.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        yield tmp
        old = None
        if path.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                        dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_parts(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    folder: str | os.PathLike,
    metadata: dict | None = None,
    rows_per_file: int = 20000,
) -> int:
    """Stream batches into `folder/part-00000.parquet`, `part-00001.parquet`, ...

    A new file starts once the current one holds `rows_per_file` rows, so memory
    stays at one batch however large the table. At least one file is written (an
    empty table has its schema), so readers of the folder always find the columns.
    Returns the row count.
    """
    folder = Path(folder)
    schema = schema_with_metadata(schema, metadata)
    iterator = (b for b in batches if b.num_rows)
    pending = next(iterator, None)
    rows, index = 0, 0
    while True:
        with atomic_path(folder / f"part-{index:05d}.parquet") as tmp, \
                pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            in_file = 0
            while pending is not None and in_file < rows_per_file:
                writer.write_batch(pending.cast(schema))
                in_file += pending.num_rows
                pending = next(iterator, None)
        rows += in_file
        index += 1
        if pending is None:
            return rows


def result_tables(results: str | os.PathLike) -> dict[str, Path]:
    """Table name -> folder of Parquet files or `<name>.parquet` file under `results`.

    Absent tables are left out, and so are stale ones: a stage switched off since an
    earlier run leaves its table behind, and the proteins table (written by every
    run) lists the stages of the run that wrote it under the metadata key `stages`.
    """
    base = Path(results)
    found: dict[str, Path] = {}
    for name in RESULT_TABLES:
        folder, single = base / name, base / f"{name}.parquet"
        if folder.is_dir() and any(folder.rglob("*.parquet")):
            found[name] = folder
        elif single.is_file():
            found[name] = single
    proteins = found.get("proteins")
    if proteins is not None:
        first = min(proteins.rglob("*.parquet")) if proteins.is_dir() else proteins
        stages = read_metadata(first).get("stages")
        if stages is not None:
            for stage, name in STAGE_TABLES.items():
                if stage not in stages:
                    found.pop(name, None)
    return found
