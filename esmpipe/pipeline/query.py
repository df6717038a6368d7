"""SQL over a results folder with DuckDB.

`proteins`, `structures`, `embeddings` (and `contigs` for contig samples) become
views over whatever form each table has on disk: a folder of Parquet parts (read
with a `**/*.parquet` glob, so nested and hive-partitioned layouts work) or one
`<name>.parquet` file. Absent tables (a stage switched off) are simply not defined
(see `esmpipe.io.tables.result_tables`).

Derived views, defined when their tables are:
- `sequences`: one row per distinct sequence of the proteins table, with the
  number of samples (`n_samples`) and records (`n_records`) it occurs in and the
  sorted list of those samples (`samples`): the cohort's prevalence.
- `records`: one row per input record, the proteins table with its structure's
  scores (`mean_plddt`, `ptm`, PAE, `flags`, ...: no per-residue or PDB columns)
  and its sequence's prevalence, for filters such as `esmpipe export --where`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import duckdb

from esmpipe.io.tables import RESULT_TABLES, atomic_path, result_tables

# The gathered tables, contigs included (which `result_tables` may not list yet).
TABLES = tuple(dict.fromkeys((*RESULT_TABLES, "contigs")))
VIEWS = ("sequences", "records")
FORMATS = ("table", "csv", "tsv", "parquet", "json")
# Structure columns too large for a row-per-record view.
BULKY_STRUCTURE_COLUMNS = ("pdb", "plddt", "pae", "cif")


class QueryError(ValueError):
    """SQL that DuckDB rejects; the message names the tables the results folder has."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _tables_on_disk(results: str | os.PathLike) -> dict[str, Path]:
    found = dict(result_tables(results))
    for name in TABLES:
        if name in found:
            continue
        folder, single = Path(results) / name, Path(results) / f"{name}.parquet"
        if name == "contigs" and folder.is_dir() and any(folder.rglob("*.parquet")):
            found[name] = folder
        elif name == "contigs" and single.is_file():
            found[name] = single
    return found


def table_sources(results: str | os.PathLike) -> dict[str, str]:
    """Table name -> DuckDB `read_parquet(...)` expression for each table present."""
    sources = {}
    for name, path in _tables_on_disk(results).items():
        if path.is_dir():
            pattern = _sql_string(str(path / "**" / "*.parquet"))
            sources[name] = (
                f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true)"
            )
        else:
            sources[name] = f"read_parquet({_sql_string(str(path))})"
    return sources


def connect(results: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per results table."""
    sources = table_sources(results)
    if not sources:
        raise FileNotFoundError(
            f"no results tables ({', '.join(TABLES)}) under {results}; "
            "point --results at the workflow's results/ folder"
        )
    con = duckdb.connect(":memory:")
    for name, source in sources.items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    if "proteins" in sources:
        _create_derived_views(con, set(sources))
    return con


def view_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """Column names of a table or view of `con`."""
    return [row[0] for row in con.execute(f"DESCRIBE {name}").fetchall()]


def _create_derived_views(con: duckdb.DuckDBPyConnection, tables: set[str]) -> None:
    proteins = view_columns(con, "proteins")
    extra = ", any_value(sequence) AS sequence" if "sequence" in proteins else ""
    con.execute(
        "CREATE VIEW sequences AS SELECT seq_hash, any_value(length) AS length, "
        "count(DISTINCT sample) AS n_samples, count(*) AS n_records, "
        f"list(DISTINCT sample ORDER BY sample) AS samples{extra} "
        "FROM proteins WHERE seq_hash IS NOT NULL GROUP BY seq_hash"
    )
    select = ["p.*"]
    joins = []
    if "structures" in tables:
        taken = set(proteins) | set(BULKY_STRUCTURE_COLUMNS)
        for column in view_columns(con, "structures"):
            if column not in taken:
                select.append(f's."{column}"')
        joins.append("LEFT JOIN structures s USING (seq_hash)")
    select += ["q.n_samples", "q.n_records"]
    joins.append("LEFT JOIN sequences q USING (seq_hash)")
    con.execute(f"CREATE VIEW records AS SELECT {', '.join(select)} FROM proteins p "
                + " ".join(joins))


def _relation(con: duckdb.DuckDBPyConnection, sql: str, results) -> duckdb.DuckDBPyRelation:
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        # The usual mistake is a table of a stage that is switched off (or misspelt).
        raise QueryError(
            f"query failed: {err}\nthe tables under {results} are "
            f"{', '.join(table_sources(results))}"
        ) from err
    if rel is None:
        raise ValueError("the statement returns no rows; give a SELECT query")
    return rel


def _limited(sql: str, limit: int | None) -> str:
    sql = sql.strip().rstrip(";")
    return sql if limit is None else f"SELECT * FROM ({sql}) LIMIT {int(limit)}"


def run_query(
    sql: str,
    results: str | os.PathLike,
    *,
    fmt: str = "table",
    output: str | os.PathLike | None = None,
    limit: int | None = None,
) -> str | None:
    """Run `sql` and return its text rendering, or write it to `output`.

    `table` renders a fixed-width table, `csv`/`tsv`/`json` (records, one per line)
    text; `parquet` needs `output`. With `output` the result is streamed there by
    DuckDB's COPY (atomically: a temporary file renamed into place) and None is
    returned. `limit`: at most that many rows (None: all).
    """
    from esmpipe.results.output import copy_to, render

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise ValueError("--format parquet needs --output FILE")
    con = connect(results)
    try:
        rel = _relation(con, sql, results)
        try:
            if output is None:
                return render(rel, fmt, limit=limit)
            if fmt == "table":
                text = render(rel, fmt, limit=limit)
                with atomic_path(output) as tmp:
                    tmp.write_text(text)
            else:
                copy_to(con, _limited(sql, limit), fmt, output, {"query": sql})
            return None
        except duckdb.Error as err:
            raise QueryError(f"query failed: {err}") from err
    finally:
        con.close()


def stream_query(
    sql: str,
    results: str | os.PathLike,
    *,
    fmt: str = "table",
    limit: int | None = None,
    out: IO[str] | None = None,
) -> tuple[int, bool]:
    """Run `sql` and stream its rows as text to `out` (stdout), at most `limit`;
    returns (rows written, whether rows were left out by the limit)."""
    from esmpipe.results.output import write_relation

    if fmt not in FORMATS or fmt == "parquet":
        raise ValueError(f"format {fmt!r} cannot go to the terminal; give --output FILE")
    con = connect(results)
    try:
        rel = _relation(con, sql, results)
        try:
            return write_relation(rel, fmt, limit=limit, out=out)
        except duckdb.Error as err:
            raise QueryError(f"query failed: {err}") from err
    finally:
        con.close()
