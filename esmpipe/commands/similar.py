"""`esmpipe similar`: the cohort's nearest sequences to a record or a sequence."""

from __future__ import annotations

import argparse
import sys

from esmpipe.cli import UserError

FORMATS = ("table", "tsv", "csv", "json", "parquet")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "similar",
        help="nearest sequences by cosine similarity of embeddings",
        description=(
            "The k distinct sequences nearest to the query by cosine similarity of their "
            "embeddings, the query first when it is in the cohort. The query is a "
            "protein_id, SAMPLE/PROTEIN_ID, seq_hash or an amino-acid sequence; a sequence "
            "not in the cohort is embedded with the model recorded in the embeddings "
            "table. The first query builds an exact float32 index (DIR/.index)."
        ),
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--query", required=True, help="protein_id, SAMPLE/PROTEIN_ID, seq_hash "
                                                  "or sequence")
    p.add_argument("-k", type=int, default=10, help="how many (default 10, query included)")
    p.add_argument("--column", default="embedding",
                   help="embedding column to compare (default embedding; e.g. layer_20, bos)")
    p.add_argument("--index-dir", help="where the vector index lives (default DIR/.index, or "
                                       "a cache folder when DIR is read-only)")
    p.add_argument("--format", default="table", choices=FORMATS, help="output format")
    p.add_argument("--output", help="write to FILE (atomically) instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from esmpipe.results import RecordNotFound, Results
    from esmpipe.results.output import copy_to, quiet_broken_pipe, write_batches
    from esmpipe.results.similar import similar

    if args.format == "parquet" and not args.output:
        raise UserError("--format parquet needs --output FILE")
    try:
        res = Results(args.results, index_dir=args.index_dir)
        table = similar(res, args.query, k=args.k, column=args.column)
    except (FileNotFoundError, RecordNotFound, ValueError) as err:
        raise UserError(str(err)) from err
    try:
        if args.output:
            res.con.register("esmpipe_similar", table)
            copy_to(res.con, "SELECT * FROM esmpipe_similar", args.format, args.output,
                    {"similar": {"query": args.query, "k": args.k, "column": args.column}})
        else:
            write_batches(iter(table.to_batches()), args.format, sys.stdout)
    except BrokenPipeError:
        quiet_broken_pipe()
    finally:
        res.close()
    return 0
