"""SQL over a results folder with DuckDB.

`proteins`, `structures` and `embeddings` become views over whatever form each
table has on disk: a folder of Parquet files (hive-partitioned or not) or one
`<name>.parquet` file. Absent tables (a stage switched off) are simply not defined.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

TABLES = ("proteins", "structures", "embeddings")
FORMATS = ("table", "csv", "tsv", "parquet", "json")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_sources(results: str | os.PathLike) -> dict[str, str]:
    """Table name -> DuckDB `read_parquet(...)` expression for each table present."""
    base = Path(results)
    sources = {}
    for name in TABLES:
        folder, single = base / name, base / f"{name}.parquet"
        if folder.is_dir() and any(folder.rglob("*.parquet")):
            pattern = _sql_string(str(folder / "**" / "*.parquet"))
            sources[name] = (
                f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true)"
            )
        elif single.is_file():
            sources[name] = f"read_parquet({_sql_string(str(single))})"
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
    finally:
        con.close()
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet needs --output FILE")
        from esmpipe.pipeline.tables import write_table

        write_table(table, output, {"query": sql})
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
        from esmpipe.pipeline.tables import atomic_path

        with atomic_path(output) as tmp:
            tmp.write_text(text)
        return None
    return text
