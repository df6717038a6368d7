"""Gathering the cohort's result tables from the per-sample and per-shard parts.

- `results/embeddings/`, `results/structures/`: one row per distinct sequence of
  the current cohort that the stage computed successfully, taken from the
  stage's cache parts (old runs' and this run's). One file (or a few, past
  `rows_per_file`) per cache part, `<part>-NNNNN.parquet`, each carrying the
  metadata of its own part (model identity, precision, output version, ...) under
  "parts". A file whose part and selection of rows did not change since the last
  gather is kept as it was (a hard link: same inode, no bytes rewritten), so an
  incremental run writes in proportion to what is new.
- `results/proteins/`: one row per input record (never fewer), the ingest rows
  with each stage's status, an overall `status` and, for sequences whose shard
  failed (`--allow-missing`), the `log` to read. One file per ingest table
  (`<sample>-NNNNN.parquet`), kept as it was while that table and the statuses
  of its records did not change, so adding a sample writes that sample's rows.
- `reuse_dir` (`--reuse-dir`): Snakemake deletes a rule's output folder before
  the job runs, so the workflow keeps hard links to the last table's files in a
  folder of its own (`work/gathered/<table>`) to reuse them from.
- `results/contigs/`: the contigs tables of the contig samples, concatenated.

Each table is a folder of Parquet files: `pyarrow.dataset.dataset(folder)` and
DuckDB's `read_parquet('folder/*.parquet')` read it as one table. Joins and
scans go through DuckDB (`esmpipe.pipeline.duck`) or stream part by part, so
memory stays bounded however large the cohort.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import esmpipe
from esmpipe import status as st
from esmpipe.io import tables
from esmpipe.io.tables import atomic_dir, atomic_path, read_metadata, schema_with_metadata
from esmpipe.pipeline import duck
from esmpipe.pipeline.config import STAGES
from esmpipe.pipeline.plan import (
    STAGE_STATUS_SCHEMA,
    part_mismatch,
    read_manifest,
)

log = logging.getLogger(__name__)

# Metadata of a cache part that describes that part's input only.
INPUT_PREFIX = "input"
# Version of the layout of gathered stage tables; part of the key under which an
# earlier gather's file is reused.
LAYOUT_VERSION = 1
# Version of the layout of the proteins table (one file per ingest table).
PROTEINS_LAYOUT = 1
# In a proteins reuse folder: the status tables (digests of their bytes) its files were
# last checked against.
VERIFIED = "_verified.json"
# The columns of results/contigs, until esmpipe.io.tables defines CONTIGS_SCHEMA.
_CONTIGS_FALLBACK = pa.schema(
    [("sample", pa.string()), ("contig", pa.string()), ("length", pa.int64()),
     ("genes", pa.int32()), ("status", pa.string())]
)


class GatherError(RuntimeError):
    """A part the cohort needs is missing or inconsistent."""


def stage_parts(plan_dir: str | os.PathLike) -> list[Path]:
    """Cache parts holding the results of a plan's cohort: cached ones, then new shards."""
    manifest = read_manifest(plan_dir)
    cache = Path(manifest["cache_dir"])
    names = list(manifest["cached_parts"])
    names += [f"{s['shard_id']}.parquet" for s in manifest["shards"]]
    return [cache / name for name in names]


def log_path(pattern: str | None, stage: str, part: str) -> str | None:
    """The log of the job that should have written cache part `part` (None: no pattern)."""
    if pattern is None:
        return None
    return pattern.format(stage=stage, shard=Path(part).stem)


def gather_stage(
    plan_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    status_output: str | os.PathLike,
    *,
    rows_per_file: int = 200000,
    allow_missing: bool = False,
    log_pattern: str | None = None,
    memory_limit: str | None = None,
    threads: int | None = None,
    reuse_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Write the stage's result table for the cohort and a status table.

    The result table keeps rows with status "ok" and drops the status column;
    `status_output` gets (seq_hash, status, log) for every distinct valid
    sequence, including those too long for the stage. With `allow_missing`, a
    missing cache part (its job failed after every retry) or a sequence absent
    from its part gives status `not_computed` and the job's log
    (`log_pattern`, e.g. "logs/{stage}/{shard}.log") instead of an error.
    `reuse_dir` keeps hard links to the table's files for the next gather (see
    `keep_links`). Returns counts by status.
    """
    manifest = read_manifest(plan_dir)
    stage = manifest["stage"]
    cache = Path(manifest["cache_dir"])
    parts = stage_parts(plan_dir)
    missing = [str(p) for p in parts if not p.is_file()]
    if missing and not allow_missing:
        raise GatherError(
            f"{stage}: cache part(s) {', '.join(missing)} missing (deleted since "
            "planning, or their jobs failed); plan again: snakemake ... --forcerun plan, "
            "or gather what finished with --allow-missing"
        )
    present = [p for p in parts if p.is_file()]
    schema, part_metadata = _result_schema(present)
    common = {
        "stage": stage,
        "settings": manifest["settings"],
        "settings_key": manifest["settings_key"],
        "esmpipe_version": esmpipe.__version__,
    }
    fingerprint = hashlib.sha256(schema.to_string(show_schema_metadata=False).encode())
    base_key = {"layout": LAYOUT_VERSION, "settings_key": manifest["settings_key"],
                "schema": fingerprint.hexdigest()[:16]}
    expect = manifest["settings"].get("expect") or {}
    previous = _reusable_files(Path(output_dir))
    if reuse_dir is not None:
        previous = {**_reusable_files(Path(reuse_dir)), **previous}
    counts: dict[str, int] = {}
    output_dir = Path(output_dir)
    written = reused = 0
    with duck.session(output_dir, memory_limit=memory_limit, threads=threads) as con, \
            atomic_dir(output_dir) as out, atomic_path(status_output) as status_tmp, \
            pq.ParquetWriter(status_tmp, schema_with_metadata(STAGE_STATUS_SCHEMA,
                                                              {"stage": stage}),
                             **duck.WRITE_OPTIONS) as status_writer:

        def record(hashes: pa.Array, status: pa.Array, logs: pa.Array | None = None) -> None:
            n = len(hashes)
            if not n:
                return
            if logs is None:
                logs = pa.nulls(n, pa.string())
            status_writer.write_table(pa.table([hashes, status, logs],
                                               schema=STAGE_STATUS_SCHEMA))
            for value, count in zip(*np.unique(status.to_numpy(zero_copy_only=False),
                                               return_counts=True), strict=True):
                counts[str(value)] = counts.get(str(value), 0) + int(count)

        def not_computed(hashes: pa.Array, part: str) -> None:
            where = log_path(log_pattern, stage, part)
            record(hashes, pa.array([st.NOT_COMPUTED] * len(hashes), pa.string()),
                   pa.array([where] * len(hashes), pa.string()))

        cohort = Path(plan_dir) / "cohort.parquet"
        for part_name, assigned in _assigned_by_part(con, cohort):
            path = cache / part_name
            if not path.is_file():
                not_computed(assigned, part_name)
                continue
            mismatch = part_mismatch(part_metadata[path], expect)
            if mismatch:
                # Computed under another key than the plan's (another precision ran, or
                # the part changed since planning): never a result of this run.
                if not allow_missing:
                    raise GatherError(
                        f"{stage}: cache part {path} does not match the run's key "
                        f"({mismatch}); delete it and re-run, or gather what matches "
                        "with --allow-missing"
                    )
                log.warning("%s: cache part %s not used: %s", stage, path, mismatch)
                not_computed(assigned, part_name)
                continue
            stat = path.stat()
            key = dict(base_key, part=part_name, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                       selection=_digest(assigned))
            old = previous.get(json.dumps(key, sort_keys=True))
            if old:
                for i, file in enumerate(old):
                    _link(file, out / _file_name(part_name, i))
                reused += len(old)
                found_hashes, found_status = _part_statuses(path, assigned)
            else:
                part_meta = {k: v for k, v in part_metadata[path].items()
                             if not k.startswith(INPUT_PREFIX)}
                metadata = {**part_meta, **common, "parts": [{"part": part_name, **part_meta}],
                            "source": key}
                found_hashes, found_status, files = _copy_part(
                    path, assigned, schema, metadata, out, rows_per_file)
                written += files
            record(found_hashes, found_status)
            if len(found_hashes) < len(assigned):
                lost = pc.filter(assigned, pc.invert(pc.is_in(assigned, found_hashes)))
                if not allow_missing:
                    raise GatherError(
                        f"{stage}: {len(lost)} sequence(s) planned but absent from their "
                        f"cache parts (e.g. {lost[0]} in {path}); plan again: "
                        "snakemake ... --forcerun plan"
                    )
                not_computed(lost, part_name)
        for batch in duck.batches(con, f"SELECT seq_hash FROM read_parquet("
                                       f"{duck.quote(str(cohort))}) WHERE plan = 'too_long'"):
            hashes = batch.column(0).cast(pa.string())
            record(hashes, pa.array([st.TOO_LONG] * len(hashes), pa.string()))
        if not any(out.iterdir()):
            # Readers of an empty table still find its columns.
            with pq.ParquetWriter(out / "empty.parquet",
                                  schema_with_metadata(schema, {**common, "parts": []})):
                pass
    if reuse_dir is not None:
        keep_links(output_dir, reuse_dir)
    log.info("%s: %d files written, %d kept from the last gather; statuses %s",
             stage, written, reused, counts)
    return counts


def _result_schema(parts: Sequence[Path]) -> tuple[pa.Schema, dict[Path, dict]]:
    """The parts' columns but `status`, unified over parts (old parts may lack new ones),
    and each part's metadata (read from the same footer)."""
    metadata: dict[Path, dict] = {}
    if not parts:
        return pa.schema([("seq_hash", pa.string()), ("length", pa.int32())]), metadata
    schemas: dict[str, pa.Schema] = {}
    for part in parts:
        schema = pq.read_schema(part)
        raw = (schema.metadata or {}).get(tables.METADATA_KEY)
        metadata[part] = json.loads(raw) if raw else {}
        schema = schema.remove_metadata()
        schemas.setdefault(schema.to_string(), schema)
    unified = pa.unify_schemas(list(schemas.values()), promote_options="permissive")
    return pa.schema([f for f in unified if f.name != "status"]), metadata


def _row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file one row group at a time (cheaper than iter_batches for small files)."""
    with open(path, "rb") as handle:
        file = pq.ParquetFile(handle)
        for i in range(file.num_row_groups):
            group = file.read_row_group(i, columns=columns, use_threads=False)
            if group.num_rows:
                yield group.combine_chunks().to_batches()[0]


def _assigned_by_part(con, cohort: Path) -> Iterator[tuple[str, pa.Array]]:
    """(part name, sorted hashes the plan takes from it) for every part, in name order."""
    current, pending = None, []
    sql = (f"SELECT part, seq_hash FROM read_parquet({duck.quote(str(cohort))}) "
           "WHERE part IS NOT NULL ORDER BY part, seq_hash")
    for batch in duck.batches(con, sql):
        names = batch.column(0).to_numpy(zero_copy_only=False)
        hashes = batch.column(1).cast(pa.string())
        runs = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True])
        for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
            if names[a] != current and current is not None:
                yield current, pa.concat_arrays(pending)
                pending = []
            current = names[a]
            pending.append(hashes.slice(a, b - a))
    if current is not None:
        yield current, pa.concat_arrays(pending)


def _digest(hashes: pa.Array) -> str:
    """A digest of a sorted list of hashes (which rows a file holds)."""
    digest = hashlib.sha256()
    for chunk in range(0, len(hashes), 65536):
        digest.update("\0".join(hashes.slice(chunk, 65536).to_pylist()).encode())
        digest.update(b"\1")
    return digest.hexdigest()[:32]


def _first_rows(batch: pa.RecordBatch, assigned: pa.Array, seen: list[pa.Array]) -> pa.Array:
    """Indices of rows of `batch` the plan takes: assigned here, first occurrence only."""
    hashes = batch.column("seq_hash")
    keep = pc.is_in(hashes, value_set=assigned)
    if seen:
        keep = pc.and_(keep, pc.invert(pc.is_in(hashes, value_set=pa.concat_arrays(seen))))
    index = pc.indices_nonzero(keep)
    if not len(index):
        return index
    firsts = pa.table({"h": hashes.take(index), "i": index}).group_by(
        "h", use_threads=False).aggregate([("i", "min")])
    first = firsts["i_min"]
    return pc.take(first, pc.sort_indices(first)).combine_chunks()


def _part_statuses(path: Path, assigned: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(seq_hash, status) of the rows the plan takes from a cache part."""
    found_h, found_s, seen = [], [], []
    for batch in _row_groups(path, ["seq_hash", "status"]):
        rows = _first_rows(batch, assigned, seen)
        if len(rows):
            found_h.append(batch.column("seq_hash").take(rows))
            found_s.append(batch.column("status").take(rows))
            seen.append(found_h[-1])
    if not found_h:
        return pa.array([], pa.string()), pa.array([], pa.string())
    return (pa.concat_arrays(found_h).cast(pa.string()),
            pa.concat_arrays(found_s).cast(pa.string()))


def _copy_part(path: Path, assigned: pa.Array, schema: pa.Schema, metadata: dict, out: Path,
               rows_per_file: int) -> tuple[pa.Array, pa.Array, int]:
    """Stream a cache part's ok rows the plan takes into `<part>-NNNNN.parquet` files.

    Returns the hashes and statuses of every row taken, and the number of files.
    """
    found_h, found_s, seen = [], [], []
    target = schema_with_metadata(schema, metadata)
    writer, in_file, files = None, 0, 0
    try:
        for batch in _row_groups(path):
            rows = _first_rows(batch, assigned, seen)
            if not len(rows):
                continue
            taken = batch.take(rows)
            found_h.append(taken.column("seq_hash").cast(pa.string()))
            found_s.append(taken.column("status").cast(pa.string()))
            seen.append(found_h[-1])
            ok = taken.filter(pc.equal(taken.column("status"), st.OK))
            if not ok.num_rows:
                continue
            if writer is not None and in_file >= rows_per_file:
                writer.close()
                writer = None
            if writer is None:
                writer = pq.ParquetWriter(out / _file_name(path.name, files), target,
                                          compression="zstd", use_dictionary=False)
                files, in_file = files + 1, 0
            writer.write_table(_conform(pa.Table.from_batches([ok]), target))
            in_file += ok.num_rows
    finally:
        if writer is not None:
            writer.close()
    if not found_h:
        empty = pa.array([], pa.string())
        return empty, empty, files
    return pa.concat_arrays(found_h), pa.concat_arrays(found_s), files


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the columns of `schema` in its order (absent ones null), cast to it."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _file_name(part: str, index: int) -> str:
    return f"{Path(part).stem}-{index:05d}.parquet"


def _reusable_files(folder: Path) -> dict[str, list[Path]]:
    """Files of an earlier gather by the key they were written under (see gather_stage)."""
    found: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return found
    for file in sorted(folder.glob("*.parquet")):
        try:
            source = read_metadata(file).get("source")
        except (OSError, pa.ArrowException):
            continue
        if isinstance(source, dict):
            found.setdefault(json.dumps(source, sort_keys=True), []).append(file)
    return found


def _link(source: Path, target: Path) -> None:
    """Hard-link an earlier gather's file into the new table (copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def table_parts(folder: str | os.PathLike) -> list[dict]:
    """The metadata of every cache part a gathered stage table holds rows from."""
    parts: dict[str, dict] = {}
    for file in sorted(Path(folder).rglob("*.parquet")):
        for entry in read_metadata(file).get("parts", []):
            parts.setdefault(entry.get("part", str(file)), entry)
    return [parts[name] for name in sorted(parts)]


def overall_status(ingest_status: str | None, stage_status: Mapping[str, str | None]) -> str:
    """The proteins table's `status`: the ingest reason, else the first stage's failure.

    A stage's non-ok status becomes `<reason>_for_<stage>` (e.g. too_long_for_fold,
    out_of_memory_for_embed) so the reason says which stage skipped the record.
    """
    if ingest_status != st.OK:
        return ingest_status or "unknown"
    for stage in STAGES:
        s = stage_status.get(stage)
        if s is not None and s != st.OK:
            return st.for_stage(s, stage)
    return st.OK


def _overall_sql(stages: Sequence[str]) -> tuple[str, str]:
    """SQL of the proteins table's `status` and `log` (`overall_status`, out of core)."""
    status = ["WHEN i.status IS DISTINCT FROM 'ok' THEN coalesce(i.status, 'unknown')"]
    logs = []
    for stage in STAGES:
        if stage in stages:
            status.append(f"WHEN s_{stage}.status <> 'ok' THEN "
                          f"s_{stage}.status || {duck.quote(st.for_stage('', stage))}")
            logs.append(f"WHEN s_{stage}.status <> 'ok' THEN s_{stage}.log")
    status_sql = "CASE " + " ".join(status) + " ELSE 'ok' END"
    log_sql = ("CASE WHEN i.status IS DISTINCT FROM 'ok' THEN NULL " + " ".join(logs)
               + " END") if logs else "NULL::VARCHAR"
    return status_sql, log_sql


def gather_proteins(
    ingest_tables: Sequence[str | os.PathLike],
    status_tables: Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    rows_per_file: int = 500000,
    memory_limit: str | None = None,
    threads: int | None = None,
    reuse_dir: str | os.PathLike | None = None,
) -> int:
    """Write the proteins table (one row per input record); returns its row count.

    Columns: the ingest columns, `embed_status` and `fold_status` (null where the
    record never reached the stage or the stage is off), `status` and `log` (the
    log of the job that did not compute the record, else null).

    One file per ingest table, `<sample>-NNNNN.parquet` (split past
    `rows_per_file`), rows in the ingest table's order. A file is kept from the
    last gather (a hard link, from `output_dir` or `reuse_dir`) when its ingest
    table is the same file (path, size, mtime) and the columns the stages decide
    (statuses, log) are the same row for row (a 128-bit digest computed in
    DuckDB): a sample whose sequences got a result since, or lost one, is
    written again; adding a sample writes that sample's file.
    """
    paths = [str(p) for p in ingest_tables]
    if not paths:
        raise GatherError("no ingest tables to gather")
    stages = [s for s in STAGES if s in status_tables]
    ingest_schema = _ingest_schema(paths)
    derived_schema = pa.schema(
        [pa.field(f"{stage}_status", pa.string()) for stage in STAGES]
        + [pa.field("status", pa.string()), pa.field("log", pa.string())])
    schema = pa.schema([f for f in ingest_schema if f.name != "status"] + list(derived_schema))
    metadata = {"table": "proteins", "stages": sorted(status_tables),
                "esmpipe_version": esmpipe.__version__}
    fingerprint = hashlib.sha256(schema.to_string(show_schema_metadata=False).encode())
    base_key = {"layout": PROTEINS_LAYOUT, "table": "proteins", "stages": stages,
                "schema": fingerprint.hexdigest()[:16]}
    output_dir = Path(output_dir)
    previous = _reusable_files(output_dir)
    if reuse_dir is not None:
        previous = {**_reusable_files(Path(reuse_dir)), **previous}
    names = _sample_names(paths)
    inputs = {stage: _file_digest(status_tables[stage]) for stage in stages}
    unchanged = _unchanged_tables(reuse_dir, inputs, paths, names, base_key)
    if unchanged is not None:
        with atomic_dir(output_dir) as out:
            for files, _ in unchanged:
                for file in files:
                    _link(file, out / file.name)
        keep_links(output_dir, reuse_dir, {VERIFIED: {"inputs": inputs}})
        log.info("proteins: every ingest table and status table as at the last gather; "
                 "%d files kept", sum(len(f) for f, _ in unchanged))
        return sum(n for _, n in unchanged)
    rows = written = reused = 0
    with duck.session(output_dir, memory_limit=memory_limit, threads=threads) as con, \
            atomic_dir(output_dir) as out:
        derived = _DerivedColumns(stages, status_tables)
        changed: list[tuple[int, dict]] = []
        for index, (n, digest) in sorted(derived.digests(con, paths).items()):
            stat = Path(paths[index]).stat()
            # The name too: a table listed twice has two files with the same rows.
            key = dict(base_key, ingest=paths[index], name=names[index], size=stat.st_size,
                       mtime_ns=stat.st_mtime_ns, rows=n, digest=digest)
            rows += n
            old = previous.get(json.dumps(key, sort_keys=True))
            if old:
                for i, file in enumerate(old):
                    _link(file, out / f"{names[index]}-{i:05d}.parquet")
                reused += len(old)
            else:
                changed.append((index, key))
        if changed:
            written = _write_proteins(con, derived, [i for i, _ in changed],
                                      [paths[i] for i, _ in changed],
                                      [names[i] for i, _ in changed],
                                      [key for _, key in changed], schema, derived_schema,
                                      metadata, out, rows_per_file)
        if not any(out.iterdir()):
            with pq.ParquetWriter(out / "empty.parquet", schema_with_metadata(schema, metadata)):
                pass
    if reuse_dir is not None:
        keep_links(output_dir, reuse_dir, {VERIFIED: {"inputs": inputs}})
    log.info("proteins: %d rows; %d files written, %d kept from the last gather",
             rows, written, reused)
    return rows


def _file_digest(path: str | os.PathLike) -> str:
    """A digest of a file's bytes (a status table: byte-identical means the same rows)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def _unchanged_tables(reuse_dir: str | os.PathLike | None, inputs: dict, paths: Sequence[str],
                      names: Sequence[str], base_key: dict
                      ) -> list[tuple[list[Path], int]] | None:
    """The last gather's files and rows of every ingest table, if nothing changed since
    (else None).

    Its derived columns depend only on the ingest tables and the status tables. When
    the status tables are byte for byte those the last gather checked (`VERIFIED`
    in `reuse_dir`, written with its links) and every ingest table is the same file,
    all its files stand without joining a row. Anything else: None (the per-file
    check decides).
    """
    if reuse_dir is None:
        return None
    folder = Path(reuse_dir)
    try:
        verified = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return None
    if verified.get("inputs") != inputs:
        return None
    by_identity: dict[str, tuple[list[Path], int]] = {}
    for key, files in _reusable_files(folder).items():
        source = json.loads(key)
        rows = source.pop("rows", None)
        source.pop("digest", None)
        if isinstance(rows, int):
            by_identity[json.dumps(source, sort_keys=True)] = (files, rows)
    found = []
    for path, name in zip(paths, names, strict=True):
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        identity = dict(base_key, ingest=path, name=name, size=stat.st_size,
                        mtime_ns=stat.st_mtime_ns)
        files = by_identity.get(json.dumps(identity, sort_keys=True))
        if files is None:
            return None
        found.append(files)
    return found


class _DerivedColumns:
    """The proteins columns the stages decide, in SQL over the ingest tables.

    `{stage}_status`, `status` and `log` of every ingest row, from the ingest
    row's own status and seq_hash joined to each stage's status table.
    """

    def __init__(self, stages: Sequence[str], status_tables: Mapping[str, str | os.PathLike]
                 ) -> None:
        self.status_tables = status_tables
        status_sql, log_sql = _overall_sql(stages)
        joins, checks = [], []
        for stage in stages:
            path = str(status_tables[stage])
            has_log = "log" in pq.read_schema(path).names
            joins.append(
                f"LEFT JOIN (SELECT seq_hash, status, "
                f"{'log' if has_log else 'NULL::VARCHAR AS log'} "
                f"FROM read_parquet({duck.quote(path)})) s_{stage} "
                f"ON i.status = 'ok' AND i.seq_hash = s_{stage}.seq_hash"
            )
            checks.append(f"WHEN i.status = 'ok' AND s_{stage}.seq_hash IS NULL "
                          f"THEN {duck.quote(stage)}")
        self.columns = [f"s_{stage}.status" if stage in stages else "NULL::VARCHAR"
                        for stage in STAGES] + [status_sql, log_sql]
        self.names = [f"{stage}_status" for stage in STAGES] + ["status", "log"]
        self.joins = " ".join(joins)
        self.missing = ("CASE " + " ".join(checks) + " END") if checks else "NULL::VARCHAR"

    def select(self, paths: Sequence[str], extra: str = "") -> str:
        """Per ingest row: file_index, file_row_number, the derived columns, `_missing`."""
        columns = ", ".join(f"{sql} AS {name}" for sql, name in zip(self.columns, self.names,
                                                                     strict=True))
        return (f"SELECT i.file_index, i.file_row_number, {columns}, "
                f"{self.missing} AS _missing{extra} "
                f"FROM read_parquet({duck.path_list(paths)}, file_row_number = true) i "
                f"{self.joins}")

    def digests(self, con, paths: Sequence[str]) -> dict[int, tuple[int, str]]:
        """File index -> (rows, digest of the derived columns row for row); checks that
        every valid record has a status from every stage."""
        # NOTE: md5 of the row number and the values ('v' + value, 'n' for null, unit
        # separators), XORed over the file: 128 bits, order-sensitive through the
        # row number; an accident, not an adversary, is what it must catch.
        # The join runs once: its small result is kept for writing (`ordered`).
        con.execute(f"CREATE TEMP TABLE derived AS {self.select(paths)}")
        fields = ", ".join(f"coalesce('v' || {name}, 'n')" for name in self.names)
        found = con.execute(
            f"SELECT file_index, count(*), bit_xor(md5_number(concat_ws(chr(31), "
            f"file_row_number::VARCHAR, {fields})))::VARCHAR, count(_missing) "
            f"FROM derived GROUP BY file_index").fetchall()
        bad = sorted(index for index, _, _, missing in found if missing)
        if bad:
            self._raise_missing(con, paths[bad[0]])
        return {int(index): (int(n), digest) for index, n, digest, _ in found}

    def ordered(self, con, indices: Sequence[int]) -> Iterator[pa.RecordBatch]:
        """The derived columns of the given files (indices into `digests`' paths), in
        (file, row) order, files renumbered 0, 1, ... in the order given."""
        numbers = pa.table({"file_index": pa.array(indices, pa.int64()),
                            "_order": pa.array(range(len(indices)), pa.int64())})
        con.register("wanted", numbers)
        yield from duck.batches(
            con, f"SELECT w._order AS file_index, d.file_row_number, "
                 f"{', '.join('d.' + n for n in self.names)} FROM derived d "
                 "JOIN wanted w USING (file_index) ORDER BY w._order, d.file_row_number")

    def _raise_missing(self, con, path: str) -> None:
        rows = self.select([path], ", i.sample, i.protein_id, i.seq_hash")
        row = con.execute(
            f"SELECT _missing, sample, protein_id, seq_hash FROM ({rows}) "
            "WHERE _missing IS NOT NULL ORDER BY file_row_number LIMIT 1").fetchone()
        stage, sample, protein_id, seq_hash = row
        raise GatherError(
            f"{self.status_tables[stage]}: no {stage} status for record {sample}/{protein_id} "
            f"(seq_hash {seq_hash}); the plan is out of date: snakemake ... --forcerun plan"
        )


def _write_proteins(con, derived: _DerivedColumns, indices: Sequence[int], paths: Sequence[str],
                    names: Sequence[str], keys: Sequence[dict], schema: pa.Schema,
                    derived_schema: pa.Schema, metadata: dict, out: Path,
                    rows_per_file: int) -> int:
    """Write the proteins files of the given ingest tables; returns the number of files.

    DuckDB gives the derived columns in (file, row) order, small columns only; the
    ingest columns (sequences) are read straight from each file in its own order
    and put beside them, so no sequence passes through a join or a sort.
    """
    stream = _RowStream(derived.ordered(con, indices))
    files = 0
    for index, (path, name, key) in enumerate(zip(paths, names, keys, strict=True)):
        target = schema_with_metadata(schema, {**metadata, "source": key})
        writer, in_file, part, done = None, 0, 0, 0
        try:
            with open(path, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(
                        batch_size=duck.BATCH_ROWS, use_threads=False):
                    side = stream.take(batch.num_rows)
                    positions = side.column("file_row_number")
                    if (side.num_rows != batch.num_rows
                            or pc.any(pc.not_equal(side.column("file_index"), index)).as_py()
                            or positions[0].as_py() != done
                            or positions[-1].as_py() != done + batch.num_rows - 1):
                        raise GatherError(f"{path}: changed while the proteins table was "
                                          "gathered; gather again")
                    done += batch.num_rows
                    columns = {n: batch.column(n) for n in batch.schema.names if n != "status"}
                    columns.update({f.name: side.column(f.name) for f in derived_schema})
                    piece = _conform(pa.table(columns), target)
                    if writer is not None and in_file >= rows_per_file:
                        writer.close()
                        writer = None
                    if writer is None:
                        writer = pq.ParquetWriter(out / f"{name}-{part:05d}.parquet", target,
                                                  **duck.WRITE_OPTIONS)
                        part, in_file, files = part + 1, 0, files + 1
                    writer.write_table(piece)
                    in_file += piece.num_rows
        finally:
            if writer is not None:
                writer.close()
    return files


class _RowStream:
    """Take consecutive runs of rows of any length from a stream of record batches."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches = iter(batches)
        self._head: pa.RecordBatch | None = None

    def take(self, n: int) -> pa.Table:
        pieces, want = [], n
        while want:
            if self._head is None or not self._head.num_rows:
                self._head = next(self._batches, None)
                if self._head is None:
                    break
            piece = self._head.slice(0, want)
            self._head = self._head.slice(piece.num_rows)
            pieces.append(piece)
            want -= piece.num_rows
        if not pieces:
            raise GatherError("the proteins' statuses ended before the ingest rows")
        return pa.Table.from_batches(pieces)


def _sample_names(paths: Sequence[str]) -> list[str]:
    """A distinct, file-name-safe name per ingest table: its file name's stem.

    Names never start with '.' or '_' (pyarrow.dataset skips such files); a stem
    two tables share gets a digest of the path, then the table's position.
    """
    names, used = [], set()
    for i, path in enumerate(paths):
        stem = re.sub(r"[^A-Za-z0-9._=+-]", "_", Path(path).name.removesuffix(".parquet"))
        if not stem or stem[0] in "._-":
            stem = f"s{stem}"
        name = stem
        if name in used:
            name = f"{stem}.{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        if name in used:
            name = f"{name}.{i}"
        used.add(name)
        names.append(name)
    return names


def keep_links(table: str | os.PathLike, reuse_dir: str | os.PathLike,
               notes: Mapping[str, dict] | None = None) -> None:
    """Make `reuse_dir` a folder of hard links to the files of `table` (no bytes copied).

    Snakemake deletes a rule's output folder before the job runs, so the next gather
    finds the last table's files here (`--reuse-dir`). Where links are impossible
    (another file system) the folder is left empty, never filled with copies.
    `notes`: JSON files written beside the links (what the table was checked against).
    """
    with atomic_dir(reuse_dir) as keep:
        for file in sorted(Path(table).glob("*.parquet")):
            try:
                os.link(file, keep / file.name)
            except OSError as err:
                log.warning("cannot keep hard links of %s in %s (%s): the next gather "
                            "rewrites the table", table, reuse_dir, err)
                for link in keep.iterdir():
                    link.unlink()
                return
        for name, content in (notes or {}).items():
            (keep / name).write_text(json.dumps(content, sort_keys=True) + "\n")


def _ingest_schema(paths: Sequence[str]) -> pa.Schema:
    """The ingest tables' columns: PROTEINS_SCHEMA's, then any others the files hold."""
    first = pq.read_schema(paths[0]).remove_metadata()
    fields = list(tables.PROTEINS_SCHEMA)
    names = {f.name for f in fields}
    fields += [f for f in first if f.name not in names]
    return pa.schema(fields)


def write_files(
    pieces: Iterable[pa.Table],
    schema: pa.Schema,
    folder: Path,
    metadata: dict,
    rows_per_file: int,
    prefix: str = "part",
) -> int:
    """Stream tables into `folder/<prefix>-00000.parquet`, ... (at least one file)."""
    target = schema_with_metadata(schema, metadata)
    rows = in_file = index = 0
    writer = None
    try:
        for piece in pieces:
            if not piece.num_rows:
                continue
            if writer is not None and in_file >= rows_per_file:
                writer.close()
                writer = None
            if writer is None:
                writer = pq.ParquetWriter(folder / f"{prefix}-{index:05d}.parquet", target,
                                          **duck.WRITE_OPTIONS)
                index, in_file = index + 1, 0
            writer.write_table(piece)
            in_file += piece.num_rows
            rows += piece.num_rows
    finally:
        if writer is not None:
            writer.close()
    if index == 0:
        with pq.ParquetWriter(folder / f"{prefix}-00000.parquet", target):
            pass
    return rows


def contigs_path(ingest_table: str | os.PathLike) -> Path:
    """`work/ingest/S.parquet` -> `work/ingest/S.contigs.parquet` (contig samples only)."""
    path = Path(ingest_table)
    return path.with_name(path.name.removesuffix(".parquet") + ".contigs.parquet")


def gather_contigs(
    ingest_tables: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    rows_per_file: int = 500000,
) -> int:
    """Concatenate the samples' contigs tables into `output_dir`; returns the row count.

    A sample without a contigs file is a protein sample and is skipped.
    """
    schema = getattr(tables, "CONTIGS_SCHEMA", _CONTIGS_FALLBACK)
    files = [p for p in map(contigs_path, ingest_tables) if p.is_file()]

    def pieces() -> Iterator[pa.Table]:
        for file in files:
            yield _conform(pq.read_table(file), schema)

    with atomic_dir(output_dir) as out:
        rows = write_files(pieces(), schema, out,
                           {"table": "contigs", "esmpipe_version": esmpipe.__version__},
                           rows_per_file)
    log.info("contigs: %d rows from %d contigs files", rows, len(files))
    return rows
