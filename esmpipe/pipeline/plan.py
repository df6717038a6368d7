"""Cohort planning: which distinct sequences a stage must still compute, in shards.

Every stage keeps a content-addressed cache of computed parts,
`<cache_dir>/<shard_id>.parquet`, where `cache_dir` is specific to the settings
that determine the results (model, revision, dtype, layer, ...). Planning
de-duplicates the cohort (all samples' ingest tables), drops what the cache
already holds, and cuts the rest into cost-balanced shards. Adding a sample and
re-running therefore computes only the sequences no earlier run has seen.

A plan folder holds:
- `shards/<shard_id>.parquet`: seq_hash, sequence, length (sorted by length), the
  input of one `esmpipe embed` / `esmpipe fold` job whose output is
  `<cache_dir>/<shard_id>.parquet`;
- `cohort.parquet`: every distinct valid sequence of the cohort with its `plan`
  ("cached", "planned" or "too_long") and the cache `part` that holds (or will
  hold) its result, so gathering reads each result from exactly one part;
- `manifest.json`: settings, cache folder, the cached parts the cohort needs and
  the new shards.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esmpipe.io.tables import atomic_dir, read_metadata, write_parquet_atomic
from esmpipe.pipeline.sharding import make_shards, settings_key

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema(
    [("seq_hash", pa.string()), ("sequence", pa.string()), ("length", pa.int32())]
)
STAGE_STATUS_SCHEMA = pa.schema([("seq_hash", pa.string()), ("status", pa.string())])
COHORT_SCHEMA = pa.schema(
    [("seq_hash", pa.string()), ("length", pa.int32()), ("plan", pa.string()),
     ("part", pa.string())]
)
# Results the stage settings determine. Any other status (out_of_memory) depends on
# the GPU and on knobs left out of the settings (max_tokens, chunk_size), so such a
# sequence is not a cache hit: the next planning (a new sample, `--forcerun plan`)
# shards it again. "too_long" counts only under a length limit no higher than the
# one the part was computed with (`cached_hashes`).
FINAL_STATUSES = ("ok", "too_long")


class PlanError(RuntimeError):
    """Inputs the planner cannot use (e.g. an unreadable cache part)."""


def read_path_list(path: str | os.PathLike) -> list[str]:
    """Paths listed in a file, one a line (blank lines and `#` comments skipped).

    A cohort of thousands of samples does not fit on one command line (the kernel's
    argument limit), so `esmpipe shard` and `esmpipe gather` take such a file.
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PlanError(f"cannot read the list of ingest tables {path}: {err}") from err
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(line)
    return paths


def ingest_inputs(
    ingest: Sequence[str] | None, ingest_list: str | os.PathLike | None
) -> list[str]:
    """`--ingest` paths followed by those of `--ingest-list`."""
    paths = list(ingest or [])
    if ingest_list is not None:
        paths += read_path_list(ingest_list)
    return paths


def distinct_sequences(ingest_tables: Iterable[str | os.PathLike]) -> pa.Table:
    """Distinct valid sequences over the cohort: seq_hash, sequence, length.

    Rows whose status is not "ok" are left out (they stay in the proteins table
    with their reason). Sorted by seq_hash, so the result is independent of the
    order of samples.
    """
    parts = []
    for path in ingest_tables:
        t = pq.read_table(path, columns=["seq_hash", "sequence", "length", "status"])
        keep = pc.and_(pc.equal(t["status"], "ok"), pc.is_valid(t["seq_hash"]))
        parts.append(t.filter(keep).select(["seq_hash", "sequence", "length"]))
    if not parts:
        return SHARD_SCHEMA.empty_table()
    table = pa.concat_tables(parts).cast(SHARD_SCHEMA)
    distinct = table.group_by("seq_hash", use_threads=False).aggregate(
        [("sequence", "first"), ("length", "first")]
    )
    distinct = distinct.rename_columns(
        {"sequence_first": "sequence", "length_first": "length"}
    ).select(["seq_hash", "sequence", "length"])
    return distinct.sort_by("seq_hash")


def cached_hashes(cache_dir: str | os.PathLike, max_length: int | None = None) -> dict[str, str]:
    """seq_hash -> name of the cache part (file name) holding its final result.

    The engine marks a sequence "too_long" by the limit it ran with (recorded in the
    part's metadata as `max_length`): the model's default when the config gives
    none, and the planner then passes it every length. Under a higher `max_length`
    now, such a sequence is computed again.
    """
    found: dict[str, str] = {}
    folder = Path(cache_dir)
    if not folder.is_dir():
        return found
    for part in sorted(folder.glob("*.parquet")):
        try:
            table = pq.read_table(part, columns=["seq_hash", "status"])
            limit = read_metadata(part).get("max_length")
        except (OSError, pa.ArrowException) as err:
            raise PlanError(
                f"cache part {part} cannot be read ({err}); delete it and re-run, "
                "its sequences will be computed again"
            ) from err
        statuses = FINAL_STATUSES
        if max_length is not None and (limit is None or max_length > limit):
            statuses = tuple(s for s in statuses if s != "too_long")
        final = pc.is_in(table["status"], pa.array(statuses))
        for h in table.filter(final)["seq_hash"].to_pylist():
            found.setdefault(h, part.name)
    return found


def plan_stage(
    ingest_tables: Sequence[str | os.PathLike],
    *,
    stage: str,
    settings: dict,
    cache_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    shard_size: float,
    cost_exponent: float,
    max_length: int | None,
) -> dict:
    """Plan one stage into `output_dir` (see the module docstring); returns the manifest.

    The folder is replaced whole, so no shard of an earlier plan survives in it.
    """
    key = settings_key(settings)
    seqs = distinct_sequences(ingest_tables)
    cache = cached_hashes(cache_dir, max_length)

    hashes = seqs["seq_hash"].to_pylist()
    lengths = seqs["length"].to_pylist()
    plan: list[str] = []
    part: dict[str, str] = {}
    todo: list[tuple[str, int]] = []
    for h, length in zip(hashes, lengths, strict=True):
        if max_length is not None and length > max_length:
            plan.append("too_long")
        elif h in cache:
            plan.append("cached")
            part[h] = cache[h]
        else:
            plan.append("planned")
            todo.append((h, length))
    needed_parts = set(part.values())

    shards = make_shards(todo, shard_size=shard_size, exponent=cost_exponent, key=key)
    for shard in shards:
        part.update((h, f"{shard.shard_id}.parquet") for h in shard.seq_hashes)
    cohort = pa.table(
        {"seq_hash": hashes, "length": lengths, "plan": plan,
         "part": [part.get(h) for h in hashes]},
        schema=COHORT_SCHEMA,
    )
    manifest = {
        "stage": stage,
        "settings": settings,
        "settings_key": key,
        "cache_dir": str(cache_dir),
        "max_length": max_length,
        "cached_parts": sorted(needed_parts),
        "shards": [
            {
                "shard_id": s.shard_id,
                "sequences": len(s.seq_hashes),
                "residues": sum(s.lengths),
                "cost": round(s.cost, 3),
            }
            for s in shards
        ],
        "counts": {name: plan.count(name) for name in ("cached", "planned", "too_long")},
    }
    index = {h: i for i, h in enumerate(hashes)}
    with atomic_dir(output_dir) as out:
        (out / "shards").mkdir()
        for shard in shards:
            rows = seqs.take([index[h] for h in shard.seq_hashes])
            path = out / "shards" / f"{shard.shard_id}.parquet"
            write_parquet_atomic(rows, path, {"stage": stage})
        write_parquet_atomic(cohort, out / "cohort.parquet", {"stage": stage, "settings_key": key})
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info(
        "%s: %d distinct sequences, %d cached, %d too long, %d to compute in %d shards",
        stage, len(hashes), manifest["counts"]["cached"], manifest["counts"]["too_long"],
        len(todo), len(shards),
    )
    return manifest


def read_manifest(plan_dir: str | os.PathLike) -> dict:
    """The manifest.json of a plan folder."""
    return json.loads((Path(plan_dir) / "manifest.json").read_text())
