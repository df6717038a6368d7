"""`esmpipe query`: SQL over the workflow's results with DuckDB."""

from __future__ import annotations

import argparse
import sys

from esmpipe.cli import UserError

# Rows the fixed-width table shows on the terminal unless --limit says otherwise.
TERMINAL_LIMIT = 50


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
    p.add_argument("--output", help="stream to FILE (DuckDB COPY) instead of stdout "
                                    "(required for parquet)")
    p.add_argument("--limit", type=int, default=None,
                   help=f"at most N rows (default: {TERMINAL_LIMIT} for the table format on "
                        "the terminal, else all; 0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import duckdb

    from esmpipe.pipeline.query import run_query, stream_query

    limit = args.limit
    if limit is None and args.output is None and args.format == "table":
        limit = TERMINAL_LIMIT
    if limit is not None and limit <= 0:
        limit = None
    try:
        if args.output is not None:
            run_query(args.sql, args.results, fmt=args.format, output=args.output, limit=limit)
            return 0
        written, more = stream_query(args.sql, args.results, fmt=args.format, limit=limit,
                                     out=sys.stdout)
    except BrokenPipeError:
        from esmpipe.results.output import quiet_broken_pipe

        quiet_broken_pipe()
        return 0
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from err
    except duckdb.Error as err:
        raise UserError(f"query failed: {err}") from err
    if more:
        print(f"esmpipe query: showing the first {written} rows; --limit N (0: all) or "
              "--output FILE for more", file=sys.stderr)
    return 0
