"""A result file written batch by batch, so that a killed job's retry resumes.

An embed or fold job over a shard can run for hours; killed part way (SIGKILL,
a SLURM TIMEOUT, a node that dies), it must not lose what it computed. While
the job runs, each finished batch is one Parquet file in a folder beside the
output, `.<output name>.partial/`, each written atomically. A retry of the same
job (same output path, same `key`) finds them, skips the sequences they hold
and computes only the rest; `finish` then streams every chunk into the final
output (atomically) and removes the folder.

`key` is a JSON-able description of everything that determines the values
(model identity, precision, settings, output version, the input's digest). A
partial folder left by a job with another key holds results that would be
stale now: it is discarded, never mixed in. The folder is not one of
Snakemake's declared outputs, so Snakemake's clean-up of a failed job's output
leaves it for the retry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from esmpipe.io.tables import atomic_path, schema_with_metadata

log = logging.getLogger(__name__)

KEY_FILE = "key.json"


class PartialOutput:
    """Chunks of a result table in `.<output>.partial/`, finished into `output`.

    `schema` is the output's schema; every chunk must have it. `id_column`
    names the column that identifies a row (the input's `seq_hash`).
    """

    def __init__(
        self,
        output: str | os.PathLike,
        schema: pa.Schema,
        key: Mapping[str, Any],
        *,
        id_column: str = "seq_hash",
    ) -> None:
        self.output = Path(output)
        self.schema = schema
        self.id_column = id_column
        self.folder = self.output.with_name(f".{self.output.name}.partial")
        self.key = json.loads(json.dumps(key, sort_keys=True))
        self._chunks = self._existing_chunks()

    def _existing_chunks(self) -> list[Path]:
        key_file = self.folder / KEY_FILE
        if self.folder.is_dir():
            try:
                same = json.loads(key_file.read_text()) == self.key
            except (OSError, ValueError):
                same = False
            chunks = sorted(self.folder.glob("chunk-*.parquet")) if same else []
            if same and all(self._readable(c) for c in chunks):
                if chunks:
                    log.info("%s: resuming from %d finished batch(es) in %s",
                             self.output, len(chunks), self.folder)  # fmt: skip
                return chunks
            log.warning("%s: discarding partial results in %s (%s)", self.output, self.folder,
                        "other settings" if not same else "unreadable chunk")  # fmt: skip
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        with atomic_path(key_file) as tmp:
            tmp.write_text(json.dumps(self.key, sort_keys=True, indent=1) + "\n")
        return []

    def _readable(self, chunk: Path) -> bool:
        try:
            return pq.read_schema(chunk).remove_metadata().equals(self.schema.remove_metadata())
        except (OSError, pa.ArrowException):
            return False

    def done(self) -> set[str]:
        """Ids (`id_column`) of the rows already written by this job or an earlier try."""
        ids: set[str] = set()
        for chunk in self._chunks:
            ids.update(pq.read_table(chunk, columns=[self.id_column])[self.id_column].to_pylist())
        return ids

    def counts(self, column: str) -> dict[Any, int]:
        """Value -> rows over every chunk written so far (e.g. of `status`)."""
        counts: dict[Any, int] = {}
        for chunk in self._chunks:
            for value in pq.read_table(chunk, columns=[column])[column].to_pylist():
                counts[value] = counts.get(value, 0) + 1
        return counts

    def write(self, table: pa.Table) -> None:
        """Add one finished batch's rows (durable once this returns)."""
        if table.num_rows == 0:
            return
        path = self.folder / f"chunk-{len(self._chunks):06d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.cast(self.schema), tmp, compression="zstd")
            _fsync(tmp)
        self._chunks.append(path)

    def finish(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Stream every chunk into `output` (atomically), remove the folder; returns rows."""
        schema = schema_with_metadata(self.schema, metadata)
        rows = 0
        with atomic_path(self.output) as tmp, \
                pq.ParquetWriter(tmp, schema, compression="zstd") as writer:  # fmt: skip
            for batch in self._batches():
                writer.write_batch(batch.cast(schema))
                rows += batch.num_rows
        shutil.rmtree(self.folder, ignore_errors=True)
        return rows

    def _batches(self) -> Iterable[pa.RecordBatch]:
        for chunk in self._chunks:
            yield from pq.ParquetFile(chunk).iter_batches(batch_size=4096)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
