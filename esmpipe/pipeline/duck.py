"""One DuckDB session per planning or gathering step, bounded in memory.

A cohort of 100 million records does not fit in the memory of the node that runs
Snakemake, so the planner and the gatherer let DuckDB do the de-duplication,
joins and sorts out of core: its memory is capped (`memory_limit`), and what does
not fit spills to a temporary folder created next to the step's output (the same
file system as the results, not a small /tmp), removed when the step ends. The
database is in memory (a file-backed one spends its time compressing tables
that live for seconds); DuckDB evicts the blocks of its tables to the spill
folder when the limit is reached. `preserve_insertion_order` is off unless the
caller asks for it: most steps sort what they write, or write sets.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

# A default that leaves room for Arrow batches in flight and the interpreter under
# the 2 GB a planning or gathering job is given per 5 million records.
DEFAULT_MEMORY_LIMIT = "1GB"
MEMORY_ENV = "ESMPIPE_DUCKDB_MEMORY"
THREADS_ENV = "ESMPIPE_DUCKDB_THREADS"
BATCH_ROWS = 131072
# Parquet writer options for tables of mostly distinct strings (hashes, sequences):
# a dictionary would be tried on every column chunk and given up.
WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": ["plan", "part", "status", "sample"],
                 "write_statistics": ["length"]}


def available_cpus() -> int:
    """CPUs this process may run on (a SLURM allocation or cgroup, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def session(
    near: str | os.PathLike,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    ordered: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection whose spill folder sits beside `near` (a path to be written).

    `memory_limit` (e.g. "1GB", "4000MB"): else $ESMPIPE_DUCKDB_MEMORY, else 1 GB.
    `threads`: else $ESMPIPE_DUCKDB_THREADS, else the CPUs this process may use.
    `ordered`: keep insertion order in results without ORDER BY (costs memory).
    """
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{near.name}.duckdb.", dir=near.parent))
    limit = memory_limit or os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_LIMIT
    n_threads = threads or int(os.environ.get(THREADS_ENV) or 0) or available_cpus()
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = {quote(limit)}")
        con.execute(f"SET threads = {int(n_threads)}")
        con.execute(f"SET temp_directory = {quote(str(tmp / 'spill'))}")
        con.execute(f"SET preserve_insertion_order = {'true' if ordered else 'false'}")
        con.execute("SET enable_progress_bar = false")
        # Arrow results with 64-bit offsets: a batch of long strings never overflows.
        con.execute("SET arrow_large_buffer_size = true")
        yield con
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log how long a step took (at debug level: `esmpipe -v ...`)."""
    start = time.perf_counter()
    yield
    log.debug("%s: %.2f s", what, time.perf_counter() - start)


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def path_list(paths: Iterable[str | os.PathLike]) -> str:
    """A DuckDB list literal of file paths, for read_parquet([...])."""
    return "[" + ", ".join(quote(str(p)) for p in paths) + "]"


def batches(
    con: duckdb.DuckDBPyConnection, sql: str, rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream the result of `sql` as Arrow record batches."""
    for batch in con.sql(sql).to_arrow_reader(rows):
        if batch.num_rows:
            yield batch


def table(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """The whole result of `sql` as an Arrow table (for small results)."""
    return con.sql(sql).to_arrow_table()
