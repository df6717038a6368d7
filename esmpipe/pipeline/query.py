"""SQL over a results folder with DuckDB.

`proteins`, `structures` and `embeddings` become views over whatever form each
table has on disk: a folder of Parquet files (hive-partitioned or not) or one
`<name>.parquet` file. Absent tables (a stage switched off) are simply not defined
(see `esmpipe.io.tables.result_tables`).
"""

from __future__ import annotations

import os

import duckdb

from esmpipe.io.tables import RESULT_TABLES as TABLES
from esmpipe.io.tables import atomic_path, result_tables, write_parquet_atomic

FORMATS = ("table", "csv", "tsv", "parquet", "json")


class QueryError(ValueError):
    """SQL that DuckDB rejects; the message names the tables the results folder has."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_sources(results: str | os.PathLike) -> dict[str, str]:
    """Table name -> DuckDB `read_parquet(...)` expression for each table present."""
    sources = {}
    for name, path in result_tables(results).items():
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
    return con


def run_query(
    sql: str,
    results: str | os.PathLike,
    *,
    fmt: str = "table",
    output: str | os.PathLike | None = None,
) -> str | None:
    """Run `sql` and return its text rendering, or write it to `output`.

    `table` renders a fixed-width table, `csv`/`tsv`/`json` (records, one per line)
    text; `parquet` needs `output`. With `output` the result is written there
    atomically and None is returned.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    con = connect(results)
    try:
        rel = con.sql(sql)
        if rel is None:
            raise ValueError("the statement returns no rows; give a SELECT query")
        table = rel.to_arrow_table()
    except duckdb.Error as err:
        # The usual mistake is a table of a stage that is switched off (or misspelt).
        raise QueryError(
            f"query failed: {err}\nthe tables under {results} are "
            f"{', '.join(table_sources(results))}"
        ) from err
    finally:
        con.close()
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet needs --output FILE")
        write_parquet_atomic(table, output, {"query": sql})
        return None
    frame = table.to_pandas()
    if fmt == "table":
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None,
                               "display.width", 200, "display.max_colwidth", 60):
            text = frame.to_string(index=False) + "\n"
    elif fmt in ("csv", "tsv"):
        text = frame.to_csv(index=False, sep="," if fmt == "csv" else "\t")
    else:
        text = frame.to_json(orient="records", lines=True)
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(text)
        return None
    return text
