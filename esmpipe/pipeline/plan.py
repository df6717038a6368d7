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
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esmpipe import status as status_names
from esmpipe.io.tables import atomic_dir, read_metadata, schema_with_metadata
from esmpipe.pipeline import duck
from esmpipe.pipeline.sharding import (
    Balancer,
    ShardDigests,
    sequence_costs,
    settings_key,
    shard_count,
)

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema(
    [("seq_hash", pa.string()), ("sequence", pa.string()), ("length", pa.int32())]
)
# A stage's status per distinct sequence; `log`: where to read why it was not computed.
STAGE_STATUS_SCHEMA = pa.schema(
    [("seq_hash", pa.string()), ("status", pa.string()), ("log", pa.string())]
)
ASSIGN_SCHEMA = pa.schema([("seq_hash", pa.string()), ("shard", pa.int32())])
COHORT_SCHEMA = pa.schema(
    [("seq_hash", pa.string()), ("length", pa.int32()), ("plan", pa.string()),
     ("part", pa.string())]
)
# Results the stage settings determine. Any other status (out_of_memory) depends on
# the GPU and on knobs left out of the settings (max_tokens, chunk_size), so such a
# sequence is not a cache hit: the next planning (a new sample, `--forcerun plan`)
# shards it again. "too_long" counts only under a length limit no higher than the
# one the part was computed with (`cached_hashes`).
FINAL_STATUSES = status_names.FINAL_STATUSES


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
    order of samples. In memory: for small cohorts and tests; `plan_stage` does
    the same out of core.
    """
    paths = [str(p) for p in ingest_tables]
    if not paths:
        return SHARD_SCHEMA.empty_table()
    with duck.session(Path(paths[0])) as con:
        table = duck.table(
            con, f"SELECT seq_hash, any_value(sequence) AS sequence, any_value(length) AS length "
            f"FROM {ingest_scan(paths)} WHERE status = 'ok' AND seq_hash IS NOT NULL "
            "GROUP BY seq_hash ORDER BY seq_hash"
        )
    return pa.Table.from_batches(table.to_batches(), table.schema).cast(SHARD_SCHEMA)


def ingest_scan(paths: Sequence[str | os.PathLike], *, filename: bool = False) -> str:
    """SQL reading the ingest tables (columns matched by name)."""
    extra = ", filename = true" if filename else ""
    return f"read_parquet({duck.path_list(paths)}, union_by_name = true{extra})"


def part_accepts(metadata: dict, expect: dict) -> bool:
    """Whether a cache part's metadata matches every `expect` key (a hit only then)."""
    return all(metadata.get(key) == value for key, value in expect.items())


def cache_parts(
    cache_dir: str | os.PathLike, max_length: int | None = None, expect: dict | None = None
) -> dict[str, tuple[str, ...]]:
    """Cache part path -> the statuses of it that count as final results now.

    The engine marks a sequence "too_long" by the limit it ran with (recorded in the
    part's metadata as `max_length`): the model's default when the config gives
    none, and the planner then passes it every length. Under a higher `max_length`
    now, such a sequence is computed again. A part whose metadata does not match
    `expect` (another model identity, precision or output version) holds no hits.
    """
    found: dict[str, tuple[str, ...]] = {}
    folder = Path(cache_dir)
    if not folder.is_dir():
        return found
    for part in sorted(folder.glob("*.parquet")):
        try:
            metadata = read_metadata(part)
        except (OSError, pa.ArrowException) as err:
            raise PlanError(
                f"cache part {part} cannot be read ({err}); delete it and re-run, "
                "its sequences will be computed again"
            ) from err
        if not part_accepts(metadata, expect or {}):
            log.info("cache part %s does not match %s: not used", part.name, expect)
            continue
        limit = metadata.get("max_length")
        statuses = FINAL_STATUSES
        if max_length is not None and (limit is None or max_length > limit):
            statuses = tuple(s for s in statuses if s != "too_long")
        found[str(part)] = statuses
    return found


def cached_hashes(
    cache_dir: str | os.PathLike, max_length: int | None = None, expect: dict | None = None
) -> dict[str, str]:
    """seq_hash -> name of the cache part (file name) holding its final result.

    The first part by name wins. In memory: for small caches and tests.
    """
    parts = cache_parts(cache_dir, max_length, expect)
    if not parts:
        return {}
    with duck.session(Path(cache_dir) / "lookup") as con:
        _load_cache(con, parts)
        rows = con.execute("SELECT seq_hash, part FROM cached").fetchall()
    return dict(rows)


def _load_cache(con, parts: dict[str, tuple[str, ...]]) -> None:
    """Table `cached` (seq_hash, part): the first part by name holding a final result."""
    by_statuses: dict[tuple[str, ...], list[str]] = {}
    for path, statuses in parts.items():
        by_statuses.setdefault(statuses, []).append(path)
    selects = []
    for statuses, paths in sorted(by_statuses.items()):
        allowed = ", ".join(duck.quote(s) for s in statuses)
        selects.append(
            f"SELECT seq_hash, parse_filename(filename) AS part "
            f"FROM read_parquet({duck.path_list(paths)}, filename = true, union_by_name = true) "
            f"WHERE status IN ({allowed})"
        )
    union = " UNION ALL ".join(selects) if selects else \
        "SELECT NULL::VARCHAR AS seq_hash, NULL::VARCHAR AS part WHERE false"
    try:
        con.execute(f"CREATE TABLE cached AS SELECT seq_hash, min(part) AS part "
                    f"FROM ({union}) GROUP BY seq_hash")
    except duckdb.Error as err:
        raise PlanError(
            f"a cache part in {Path(next(iter(parts))).parent} cannot be read ({err}); "
            "delete it and re-run, its sequences will be computed again"
        ) from err


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
    memory_limit: str | None = None,
    threads: int | None = None,
) -> dict:
    """Plan one stage into `output_dir` (see the module docstring); returns the manifest.

    Out of core: DuckDB de-duplicates the cohort and looks up the cache, the shards
    are dealt out from a stream in LPT order, and every output is written from a
    stream, so memory stays bounded (`memory_limit`) however large the cohort.
    `settings["expect"]`, if given, is what a cache part's metadata must match to
    count as a hit. The folder is replaced whole, so no shard of an earlier plan
    survives in it.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    key = settings_key(settings)
    expect = settings.get("expect") or {}
    if not isinstance(expect, dict):
        raise PlanError(f"settings 'expect' must be an object, got {expect!r}")
    parts = cache_parts(cache_dir, max_length, expect)
    paths = [str(p) for p in ingest_tables]
    output_dir = Path(output_dir)
    with duck.session(output_dir, memory_limit=memory_limit, threads=threads) as con, \
            atomic_dir(output_dir) as out:
        if not paths:
            raise PlanError("no ingest tables to plan")
        # Distinct sequences without their text (grouping the text costs several
        # times more); `first_file` says where to fetch it for the shards.
        con.execute(
            "CREATE TABLE seqs AS SELECT seq_hash, any_value(length)::INTEGER AS length, "
            f"min(filename) AS first_file FROM {ingest_scan(paths, filename=True)} "
            "WHERE status = 'ok' AND seq_hash IS NOT NULL GROUP BY seq_hash"
        )
        _load_cache(con, parts)
        too_long = "false" if max_length is None else f"s.length > {int(max_length)}"
        con.execute(
            "CREATE TABLE status AS SELECT s.seq_hash, s.length, "
            f"CASE WHEN {too_long} THEN 'too_long' WHEN c.part IS NOT NULL THEN 'cached' "
            "ELSE 'planned' END AS plan, "
            f"CASE WHEN {too_long} THEN NULL ELSE c.part END AS part "
            "FROM seqs s LEFT JOIN cached c USING (seq_hash)"
        )
        shards = _deal_out(con, out, key, shard_size, cost_exponent, stage, paths)
        counts = dict.fromkeys(("cached", "planned", "too_long"), 0)
        counts.update(con.execute("SELECT plan, count(*) FROM status GROUP BY plan").fetchall())
        needed = [r[0] for r in con.execute(
            "SELECT DISTINCT part FROM status WHERE plan = 'cached' ORDER BY part").fetchall()]
        _write_cohort(con, out / "cohort.parquet", {"stage": stage, "settings_key": key})
        manifest = {
            "stage": stage,
            "settings": settings,
            "settings_key": key,
            "cache_dir": str(cache_dir),
            "max_length": max_length,
            "cached_parts": needed,
            "shards": shards,
            "counts": counts,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info(
        "%s: %d distinct sequences, %d cached, %d too long, %d to compute in %d shards",
        stage, sum(counts.values()), counts["cached"], counts["too_long"], counts["planned"],
        len(shards),
    )
    return manifest


def _deal_out(con, out: Path, key: str, shard_size: float, exponent: float,
              stage: str, ingest: list[str]) -> list[dict]:
    """Cut the planned sequences into shards and write shards/<id>.parquet.

    Returns the manifest's shard entries (sorted by id) and leaves tables `assign`
    (seq_hash, shard) and `shard_names` (shard, part) behind.
    """
    (out / "shards").mkdir()
    con.execute("CREATE TABLE assign (seq_hash VARCHAR, shard INTEGER)")
    con.execute("CREATE TABLE shard_names (shard INTEGER, part VARCHAR)")
    by_length = con.execute(
        "SELECT length, count(*) FROM status WHERE plan = 'planned' GROUP BY length "
        "ORDER BY length DESC").fetchall()
    n_items = sum(n for _, n in by_length)
    if not n_items:
        return []
    lengths = np.array([length for length, _ in by_length], dtype=np.int64)
    group_costs = sequence_costs(lengths, exponent) * np.array([n for _, n in by_length])
    balancer = Balancer(shard_count(math.fsum(group_costs.tolist()), n_items, shard_size))
    # 1. Deal out in LPT order, whole runs of equal length at a time.
    assign_path = out / ".assign.parquet"
    with pq.ParquetWriter(assign_path, ASSIGN_SCHEMA, compression="lz4", use_dictionary=False,
                          write_statistics=False) as writer:
        carry: pa.RecordBatch | None = None
        for batch in duck.batches(con, "SELECT seq_hash, length FROM status WHERE plan = "
                                       "'planned' ORDER BY length DESC, seq_hash"):
            if carry is not None:
                batch = pa.Table.from_batches([carry, batch]).combine_chunks().to_batches()[0]
            lens = batch.column("length").to_numpy()
            # The last run of lengths may continue in the next batch: keep it back.
            cut = int(np.searchsorted(-lens, -lens[-1], side="left"))
            carry, batch = batch.slice(cut), batch.slice(0, cut)
            _write_assigned(writer, batch, balancer, exponent)
        if carry is not None:
            _write_assigned(writer, carry, balancer, exponent)
    con.execute("DROP TABLE assign")
    con.execute(f"CREATE TABLE assign AS SELECT * FROM read_parquet("
                f"{duck.quote(str(assign_path))})")
    assign_path.unlink()
    # 2. Shard ids: digests of each shard's sorted members and the settings key.
    digests = ShardDigests(balancer.n_shards, key)
    for batch in duck.batches(con, "SELECT shard, seq_hash FROM assign ORDER BY shard, seq_hash"):
        digests.update(batch.column("shard").to_numpy(), batch.column("seq_hash"))
    ids = digests.ids()
    names = pa.table({"shard": pa.array(range(len(ids)), pa.int32()),
                      "part": [f"{i}.parquet" for i in ids]})
    con.execute("DROP TABLE shard_names")
    con.register("names", names)
    con.execute("CREATE TABLE shard_names AS SELECT * FROM names")
    con.unregister("names")
    # 3. The shard files, members sorted by length then hash, their text read from
    # the first file holding each. A file may hold a sequence twice: such rows
    # arrive one after the other, and all but the first are dropped.
    stats: dict[int, list[int]] = {}
    writer, current, previous = None, -1, None
    try:
        for batch in duck.batches(
            con, "SELECT a.shard, i.seq_hash, i.sequence, i.length "
                 f"FROM {ingest_scan(ingest, filename=True)} i "
                 "JOIN (SELECT a.shard, a.seq_hash, s.first_file FROM assign a "
                 "JOIN seqs s USING (seq_hash)) a "
                 "ON i.seq_hash = a.seq_hash AND i.filename = a.first_file "
                 "ORDER BY a.shard, i.length, i.seq_hash"):
            hashes = batch.column("seq_hash")
            repeat = np.r_[hashes[0].as_py() == previous,
                           pc.equal(hashes[1:], hashes[:-1]).to_numpy(zero_copy_only=False)]
            previous = hashes[-1].as_py()
            if repeat.any():
                batch = batch.filter(pa.array(~repeat))
            shards = batch.column("shard").to_numpy()
            runs = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1], True])
            for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
                shard = int(shards[a])
                if shard != current:
                    if writer is not None:
                        writer.close()
                    current = shard
                    path = out / "shards" / f"{ids[shard]}.parquet"
                    writer = pq.ParquetWriter(
                        path, schema_with_metadata(SHARD_SCHEMA, {"stage": stage}),
                        **duck.WRITE_OPTIONS)
                rows = batch.slice(a, b - a)
                writer.write_table(pa.Table.from_batches([rows]).select(
                    ["seq_hash", "sequence", "length"]).cast(SHARD_SCHEMA))
                entry = stats.setdefault(shard, [0, 0])
                entry[0] += rows.num_rows
                entry[1] += int(pc.sum(rows.column("length")).as_py())
    finally:
        if writer is not None:
            writer.close()
    shards = [
        {"shard_id": ids[i], "sequences": stats[i][0], "residues": stats[i][1],
         "cost": round(float(balancer.loads[i]), 3)}
        for i in range(len(ids))
    ]
    return sorted(shards, key=lambda s: s["shard_id"])


def _write_assigned(writer: pq.ParquetWriter, batch: pa.RecordBatch, balancer: Balancer,
                    exponent: float) -> None:
    if not batch.num_rows:
        return
    shard = balancer.assign(batch.column("length").to_numpy(), exponent)
    writer.write_table(pa.table({"seq_hash": batch.column("seq_hash"),
                                 "shard": pa.array(shard, pa.int32())}, schema=ASSIGN_SCHEMA))


def _write_cohort(con, path: Path, metadata: dict) -> None:
    """cohort.parquet from table `status`, sorted by seq_hash, streamed."""
    schema = schema_with_metadata(COHORT_SCHEMA, metadata)
    with pq.ParquetWriter(path, schema, **duck.WRITE_OPTIONS) as writer:
        for batch in duck.batches(
            con, "SELECT s.seq_hash, s.length, s.plan, coalesce(s.part, n.part) AS part "
                 "FROM status s LEFT JOIN assign a USING (seq_hash) "
                 "LEFT JOIN shard_names n USING (shard) ORDER BY s.seq_hash"):
            writer.write_table(pa.Table.from_batches([batch]).cast(COHORT_SCHEMA))


def read_manifest(plan_dir: str | os.PathLike) -> dict:
    """The manifest.json of a plan folder."""
    return json.loads((Path(plan_dir) / "manifest.json").read_text())
