"""`esmpipe query`: SQL over the workflow's results with DuckDB."""

from __future__ import annotations

import argparse
import sys

from esmpipe.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    from esmpipe.pipeline.query import FORMATS

    p = subparsers.add_parser(
        "query",
        help="run SQL on the results tables (proteins, structures, embeddings)",
        description=(
            "Run a DuckDB SQL query over a results folder. The tables proteins, structures "
            "and embeddings are views over its Parquet files. Example: esmpipe query "
            "\"SELECT sample, count(*) FROM proteins GROUP BY sample\" --results results"
        ),
    )
    p.add_argument("sql", help="a SELECT statement")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--format", default="table", choices=FORMATS, help="output format")
    p.add_argument("--output", help="write to FILE instead of stdout (required for parquet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import duckdb

    from esmpipe.pipeline.query import run_query

    try:
        text = run_query(args.sql, args.results, fmt=args.format, output=args.output)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from err
    except duckdb.Error as err:
        raise UserError(f"query failed: {err}") from err
    if text is not None:
        sys.stdout.write(text)
    return 0
