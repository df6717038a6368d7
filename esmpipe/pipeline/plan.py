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
import shutil
from collections.abc import Iterable, Iterator, Sequence
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
# A planned sequence's shard, and where its text is read from: the first ingest row
# holding it, as (file index << POS_BITS) + row number.
ASSIGN_SCHEMA = pa.schema([("seq_hash", pa.string()), ("shard", pa.int32()),
                           ("length", pa.int32()), ("first_pos", pa.int64())])
POS_BITS = 32
# Shard files are written a bucket of consecutive shards at a time, its text sorted
# in memory: about this many residues (bytes) a bucket, more only beyond MAX_BUCKETS
# buckets (open files) or for a single larger shard.
BUCKET_RESIDUES = 64 * 2**20
MAX_BUCKETS = 256
BUCKET_SCHEMA = pa.schema([("shard", pa.int32()), *SHARD_SCHEMA])
# Rows held in memory before they are appended to their bucket's file.
BUFFER_BYTES = 128 * 2**20
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
    """SQL reading the ingest tables."""
    extra = ", filename = true" if filename else ""
    # Ingest tables share PROTEINS_SCHEMA: binding reads one footer, not thousands.
    return f"read_parquet({duck.path_list(paths)}{extra})"


def part_accepts(metadata: dict, expect: dict) -> bool:
    """Whether a cache part's metadata matches every `expect` key (a hit only then).

    A key the part does not record, or records as null (an identity the job could
    not tell), never matches: such a part is never reused under an `expect`.
    """
    return part_mismatch(metadata, expect) is None


def part_mismatch(metadata: dict, expect: dict) -> str | None:
    """The first `expect` key a part's metadata does not match, as text (None: all match)."""
    for key, value in expect.items():
        if metadata.get(key) is None or metadata[key] != value:
            return f"{key} {metadata.get(key)!r}, expected {value!r}"
    return None


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
        mismatch = part_mismatch(metadata, expect or {})
        if mismatch:
            log.info("cache part %s not reused: %s", part.name, mismatch)
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
        # times more); `first_pos` says where to read it for the shards.
        con.execute(
            "CREATE TABLE seqs AS SELECT seq_hash, any_value(length)::INTEGER AS length, "
            f"min((file_index::BIGINT << {POS_BITS}) + file_row_number) AS first_pos "
            f"FROM {ingest_scan(paths)} "
            "WHERE status = 'ok' AND seq_hash IS NOT NULL GROUP BY seq_hash"
        )
        _load_cache(con, parts)
        too_long = "false" if max_length is None else f"s.length > {int(max_length)}"
        con.execute(
            "CREATE TABLE status AS SELECT s.seq_hash, s.length, s.first_pos, "
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
    (seq_hash, shard, length, first_pos) and `shard_names` (shard, part) behind.
    """
    (out / "shards").mkdir()
    con.execute("CREATE TABLE assign (seq_hash VARCHAR, shard INTEGER, length INTEGER, "
                "first_pos BIGINT)")
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
        for batch in duck.batches(con, "SELECT seq_hash, length, first_pos FROM status "
                                       "WHERE plan = 'planned' ORDER BY length DESC, seq_hash"):
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
    # 2. The shard files, and their ids: digests of each shard's sorted members and
    # the settings key.
    ids, sequences, residues = _write_shards(
        con, out, ShardDigests(balancer.n_shards, key),
        schema_with_metadata(SHARD_SCHEMA, {"stage": stage}), ingest)
    names = pa.table({"shard": pa.array(range(len(ids)), pa.int32()),
                      "part": [f"{i}.parquet" for i in ids]})
    con.execute("DROP TABLE shard_names")
    con.register("names", names)
    con.execute("CREATE TABLE shard_names AS SELECT * FROM names")
    con.unregister("names")
    shards = [
        {"shard_id": ids[i], "sequences": int(sequences[i]), "residues": int(residues[i]),
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
                                 "shard": pa.array(shard, pa.int32()),
                                 "length": batch.column("length"),
                                 "first_pos": batch.column("first_pos")}, schema=ASSIGN_SCHEMA))


def _write_shards(con, out: Path, digests: ShardDigests, schema: pa.Schema,
                  ingest: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """shards/<id>.parquet of every shard in `assign`: members sorted by length, then hash.

    The text is never sorted as a whole (at 20 million records it is several GB, and
    a sort spilling it grows faster than the cohort). Only the members' positions
    (first ingest file and row holding each) are sorted; the text is then read file
    by file, only the rows needed, into buckets of consecutive shards (Arrow files
    beside the output), and each bucket, small, is sorted in memory, its shards
    named (`digests`) and written. Returns (ids, sequences, residues) per shard.
    """
    n = digests.n_shards
    sequences = np.zeros(n, dtype=np.int64)
    residues = np.zeros(n, dtype=np.int64)
    for shard, count, total in con.execute(
            "SELECT shard, count(*), sum(length) FROM assign GROUP BY shard").fetchall():
        sequences[shard], residues[shard] = count, total
    size = max(BUCKET_RESIDUES, math.ceil(residues.sum() / MAX_BUCKETS))
    # A shard goes to the bucket its first residue falls in.
    _, bucket_of = np.unique((np.cumsum(residues) - residues) // size, return_inverse=True)
    folder = out / ".buckets"
    folder.mkdir()
    ids: list[str | None] = [None] * n
    try:
        with _Buckets(folder, int(bucket_of.max()) + 1) as buckets:
            for path, rows, shards in _first_rows(con, ingest):
                buckets.add(bucket_of[shards], shards, _read_rows(path, rows))
        for bucket in buckets.paths:
            _write_bucket(bucket, out / "shards", digests, ids, schema)
            bucket.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [i if i is not None else digests.id(k) for k, i in enumerate(ids)], sequences, residues


class _Buckets:
    """One Arrow file per bucket, appended to in large batches.

    Rows arrive file by file, a few from every bucket at a time: they are kept in
    memory up to BUFFER_BYTES in all, then the fullest buckets are written.
    """

    def __init__(self, folder: Path, n: int) -> None:
        self.paths = [folder / f"{b}.arrow" for b in range(n)]
        self._writers = [pa.ipc.new_file(str(p), BUCKET_SCHEMA) for p in self.paths]
        self._pending: list[list[pa.Table]] = [[] for _ in range(n)]
        self._bytes = np.zeros(n, dtype=np.int64)

    def add(self, buckets: np.ndarray, shards: np.ndarray, rows: pa.Table) -> None:
        """Rows (seq_hash, sequence, length) of the given shards, in their buckets."""
        order = np.argsort(buckets, kind="stable")
        table = pa.table({"shard": pa.array(shards, pa.int32()),
                          **{c: rows[c] for c in SHARD_SCHEMA.names}}, schema=BUCKET_SCHEMA)
        cuts = np.flatnonzero(np.r_[True, np.diff(buckets[order]) != 0, True])
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            b = int(buckets[order[lo]])
            # A compact copy (not a slice, which would keep the whole table alive).
            piece = table.take(pa.array(order[lo:hi]))
            self._pending[b].append(piece)
            self._bytes[b] += piece.nbytes
        while self._bytes.sum() > BUFFER_BYTES:
            self._flush(int(np.argmax(self._bytes)))

    def _flush(self, b: int) -> None:
        if self._pending[b]:
            self._writers[b].write_table(pa.concat_tables(self._pending[b]).combine_chunks())
        self._pending[b], self._bytes[b] = [], 0

    def __enter__(self) -> _Buckets:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for b in range(len(self.paths)):
                    self._flush(b)
        finally:
            for writer in self._writers:
                writer.close()


def _first_rows(con, ingest: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(ingest path, rows ascending, their shards): every member of `assign` once,
    at the first row of the cohort holding its sequence, file by file."""
    for batch in duck.batches(con, "SELECT first_pos, shard FROM assign ORDER BY first_pos"):
        pos = batch.column("first_pos").to_numpy()
        shards = batch.column("shard").to_numpy()
        files = pos >> POS_BITS
        runs = np.flatnonzero(np.r_[True, files[1:] != files[:-1], True])
        for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
            yield ingest[int(files[a])], pos[a:b] & ((1 << POS_BITS) - 1), shards[a:b]


def _read_rows(path: str, rows: np.ndarray) -> pa.Table:
    """Columns seq_hash, sequence, length of the given rows (ascending) of an ingest table,
    read a batch at a time from the row groups that hold them."""
    columns = SHARD_SCHEMA.names
    pieces = []
    with pq.ParquetFile(path) as parquet:
        meta = parquet.metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows
                                  for g in range(meta.num_row_groups)])
        groups = np.searchsorted(starts, rows, side="right") - 1
        for g in np.unique(groups).tolist():
            offset = int(starts[g])
            for batch in parquet.iter_batches(duck.BATCH_ROWS, row_groups=[g], columns=columns):
                end = offset + batch.num_rows
                lo, hi = np.searchsorted(rows, [offset, end])
                if hi > lo:
                    pieces.append(batch.take(pa.array(rows[lo:hi] - offset)))
                offset = end
    if sum(p.num_rows for p in pieces) != len(rows):
        raise PlanError(f"ingest table {path} changed while the cohort was planned; "
                        "run the plan again")
    return pa.Table.from_batches(pieces, pieces[0].schema).cast(SHARD_SCHEMA)


def _write_bucket(path: Path, folder: Path, digests: ShardDigests, ids: list[str | None],
                  schema: pa.Schema) -> None:
    """One bucket: name its shards (`ids`, from their members in hash order) and write
    them, members sorted by (length, seq_hash), one file each."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all().combine_chunks()
    if not table.num_rows:
        return
    by_hash = table.select(["shard", "seq_hash"]).sort_by(
        [("shard", "ascending"), ("seq_hash", "ascending")])
    shards = by_hash.column("shard").to_numpy()
    digests.update(shards, by_hash.column("seq_hash").combine_chunks())
    for shard in np.unique(shards).tolist():
        ids[shard] = digests.id(shard)
    table = table.take(pc.sort_indices(table, sort_keys=[
        ("shard", "ascending"), ("length", "ascending"), ("seq_hash", "ascending")]))
    shards = table.column("shard").to_numpy()
    rows = table.select(SHARD_SCHEMA.names).cast(schema)
    runs = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1], True])
    for a, b in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
        with pq.ParquetWriter(folder / f"{ids[int(shards[a])]}.parquet", schema,
                              **duck.WRITE_OPTIONS) as writer:
            writer.write_table(rows.slice(a, b - a))


def _write_cohort(con, path: Path, metadata: dict) -> None:
    """cohort.parquet from tables `status` and `assign`, sorted by seq_hash, streamed.

    The planned sequences come from `assign` (their part: the shard's), the others
    from `status`: no join of the two large tables, only of `assign` with the small
    `shard_names`.
    """
    schema = schema_with_metadata(COHORT_SCHEMA, metadata)
    with pq.ParquetWriter(path, schema, **duck.WRITE_OPTIONS) as writer:
        for batch in duck.batches(
            con, "SELECT seq_hash, length, plan, part FROM status WHERE plan <> 'planned' "
                 "UNION ALL SELECT a.seq_hash, a.length, 'planned' AS plan, n.part "
                 "FROM assign a JOIN shard_names n USING (shard) ORDER BY seq_hash"):
            writer.write_table(pa.Table.from_batches([batch]).cast(COHORT_SCHEMA))


def read_manifest(plan_dir: str | os.PathLike) -> dict:
    """The manifest.json of a plan folder."""
    return json.loads((Path(plan_dir) / "manifest.json").read_text())
