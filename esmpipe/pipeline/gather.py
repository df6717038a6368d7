"""Gathering the cohort's result tables from the per-sample and per-shard parts.

- `results/embeddings/`, `results/structures/`: one row per distinct sequence of
  the current cohort that the stage computed successfully, taken from the
  stage's cache parts (old runs' and this run's), streamed into numbered files.
- `results/proteins/`: one row per input record (never fewer), the ingest rows
  with each stage's status and an overall `status`.

Each table is a folder of `part-NNNNN.parquet` files: `pyarrow.dataset.dataset(folder)`
and DuckDB's `read_parquet('folder/*.parquet')` read it as one table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import esmpipe
from esmpipe.io.tables import atomic_dir, read_metadata, write_parquet_atomic, write_parts
from esmpipe.pipeline.config import STAGES
from esmpipe.pipeline.plan import STAGE_STATUS_SCHEMA, read_manifest

log = logging.getLogger(__name__)

# Metadata of a cache part that describes that part only (besides input*).
PER_PART_KEYS = ("max_tokens",)


class GatherError(RuntimeError):
    """A part the cohort needs is missing or inconsistent."""


def stage_parts(plan_dir: str | os.PathLike) -> list[Path]:
    """Cache parts holding the results of a plan's cohort: cached ones, then new shards."""
    manifest = read_manifest(plan_dir)
    cache = Path(manifest["cache_dir"])
    names = list(manifest["cached_parts"])
    names += [f"{s['shard_id']}.parquet" for s in manifest["shards"]]
    return [cache / name for name in names]


def gather_stage(
    plan_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    status_output: str | os.PathLike,
    *,
    rows_per_file: int = 20000,
) -> dict[str, int]:
    """Write the stage's result table for the cohort and a status table.

    The result table keeps rows with status "ok" and drops the status column;
    `status_output` gets (seq_hash, status) for every distinct valid sequence,
    including those too long for the stage. Returns counts by status.
    """
    manifest = read_manifest(plan_dir)
    cohort = pq.read_table(Path(plan_dir) / "cohort.parquet")
    # seq_hash -> the part the plan chose for its result. Other parts of the cache
    # may hold other results for it (an earlier failure, another cohort's run).
    assigned = dict(
        zip(cohort["seq_hash"].to_pylist(), cohort["part"].to_pylist(), strict=True)
    )
    parts = stage_parts(plan_dir)
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise GatherError(
            f"{manifest['stage']}: cache part(s) {', '.join(missing)} missing (deleted since "
            "planning?); plan again: snakemake ... --forcerun plan"
        )

    # The result table has the parts' columns but `status` (only ok rows are kept).
    schema = pa.schema([("seq_hash", pa.string()), ("length", pa.int32())])
    if parts:
        schema = pa.schema([f for f in pq.read_schema(parts[0]) if f.name != "status"])
    status: dict[str, str] = {}

    def ok_batches() -> Iterator[pa.RecordBatch]:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=1024):
                hashes = batch.column("seq_hash").to_pylist()
                statuses = batch.column("status").to_pylist()
                keep = []
                for i, (h, s) in enumerate(zip(hashes, statuses, strict=True)):
                    if assigned.get(h) == part.name and h not in status:
                        status[h] = s
                        if s == "ok":
                            keep.append(i)
                if keep:
                    yield batch.take(pa.array(keep)).drop_columns(["status"])

    metadata: dict = {}
    if parts:
        # Run settings (model, revision, dtype, device, ...) are the same in every part
        # of a cache folder; what describes one shard's input is left out.
        metadata.update(
            (k, v) for k, v in read_metadata(parts[0]).items()
            if not k.startswith("input") and k not in PER_PART_KEYS
        )
    metadata.update(
        {
            "stage": manifest["stage"],
            "settings": manifest["settings"],
            "settings_key": manifest["settings_key"],
            "esmpipe_version": esmpipe.__version__,
            "cache_parts": len(parts),
        }
    )
    with atomic_dir(output_dir) as out:
        rows = write_parts(ok_batches(), schema, out, metadata, rows_per_file)
        lost = sorted(h for h, part in assigned.items() if part is not None and h not in status)
        if lost:
            example = Path(manifest["cache_dir"]) / assigned[lost[0]]
            raise GatherError(
                f"{manifest['stage']}: {len(lost)} sequence(s) planned but absent from their "
                f"cache parts (e.g. {lost[0]} in {example}); plan again: "
                "snakemake ... --forcerun plan"
            )
    for h in cohort.filter(pc.field("plan") == "too_long")["seq_hash"].to_pylist():
        status[h] = "too_long"
    status_table = pa.table(
        {"seq_hash": list(status), "status": list(status.values())}, schema=STAGE_STATUS_SCHEMA
    ).sort_by("seq_hash")
    write_parquet_atomic(status_table, status_output, {"stage": manifest["stage"]})
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    log.info("%s: %d result rows; statuses %s", manifest["stage"], rows, counts)
    return counts


def overall_status(ingest_status: str | None, stage_status: Mapping[str, str | None]) -> str:
    """The proteins table's `status`: the ingest reason, else the first stage's failure.

    A stage's non-ok status becomes `<reason>_for_<stage>` (e.g. too_long_for_fold,
    out_of_memory_for_embed) so the reason says which stage skipped the record.
    """
    if ingest_status != "ok":
        return ingest_status or "unknown"
    for stage in STAGES:
        s = stage_status.get(stage)
        if s is not None and s != "ok":
            return f"{s}_for_{stage}"
    return "ok"


def gather_proteins(
    ingest_tables: Sequence[str | os.PathLike],
    status_tables: Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    rows_per_file: int = 500000,
) -> int:
    """Write the proteins table (one row per input record); returns its row count.

    Columns: the ingest columns, `embed_status` and `fold_status` (null where the
    record never reached the stage or the stage is off) and `status`.
    """
    tables = [pq.read_table(p) for p in ingest_tables]
    proteins = pa.concat_tables(tables, promote_options="default") if tables else None
    if proteins is None:
        raise GatherError("no ingest tables to gather")
    stage_maps: dict[str, dict[str, str]] = {}
    for stage, path in status_tables.items():
        t = pq.read_table(path)
        stage_maps[stage] = dict(
            zip(t["seq_hash"].to_pylist(), t["status"].to_pylist(), strict=True)
        )

    hashes = proteins["seq_hash"].to_pylist()
    ingest_status = proteins["status"].to_pylist()
    stage_cols: dict[str, list[str | None]] = {stage: [] for stage in STAGES}
    overall: list[str] = []
    for i, (h, s) in enumerate(zip(hashes, ingest_status, strict=True)):
        row: dict[str, str | None] = {}
        for stage in STAGES:
            value = None
            if s == "ok" and stage in stage_maps:
                value = stage_maps[stage].get(h)
                if value is None:
                    record = f"{proteins['sample'][i]}/{proteins['protein_id'][i]}"
                    raise GatherError(
                        f"{status_tables[stage]}: no {stage} status for record {record} "
                        f"(seq_hash {h}); the plan is out of date: snakemake ... --forcerun plan"
                    )
            row[stage] = value
            stage_cols[stage].append(value)
        overall.append(overall_status(s, row))

    proteins = proteins.drop_columns(["status"])
    for stage in STAGES:
        proteins = proteins.append_column(
            pa.field(f"{stage}_status", pa.string()), pa.array(stage_cols[stage], pa.string())
        )
    proteins = proteins.append_column(pa.field("status", pa.string()), pa.array(overall))

    metadata = {
        "table": "proteins",
        "stages": sorted(status_tables),
        "esmpipe_version": esmpipe.__version__,
    }
    with atomic_dir(output_dir) as out:
        write_parts(proteins.to_batches(max_chunksize=65536), proteins.schema, out, metadata,
                    rows_per_file)
    log.info("proteins: %d rows", proteins.num_rows)
    return proteins.num_rows
