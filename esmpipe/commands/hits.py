"""`esmpipe hits`: the input records whose predicted structure is confident."""

from __future__ import annotations

import argparse
import sys

from esmpipe.cli import UserError

FORMATS = ("tsv", "csv", "fasta", "parquet", "json")
FASTA_FIELDS = ("seq_hash", "mean_plddt", "ptm", "n_samples", "flags")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hits",
        help="records whose structure has mean pLDDT and pTM above thresholds",
        description=(
            "One row per input record (sample, protein_id) whose structure has mean pLDDT > "
            "--min-plddt and pTM > --min-ptm (strictly above; 70 and 0.7 are the ESM "
            "Metagenomic Atlas's high confidence), with its scores and how many samples "
            "and records share its sequence. --format fasta writes the sequences."
        ),
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--min-plddt", type=float, default=70.0,
                   help="mean pLDDT (0-100) must be above this (default 70)")
    p.add_argument("--min-ptm", type=float, default=0.7,
                   help="pTM (0-1) must be above this (default 0.7)")
    p.add_argument("--sample", nargs="+", action="extend", metavar="S",
                   help="only these samples (repeat or list several)")
    p.add_argument("--format", default="tsv", choices=FORMATS, help="output format (tsv)")
    p.add_argument("--output", help="write to FILE (atomically) instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from esmpipe.io.tables import write_parquet_atomic
    from esmpipe.results import RecordNotFound, Results
    from esmpipe.results.output import (
        copy_to,
        quiet_broken_pipe,
        write_batches,
        write_fasta,
        write_fasta_file,
    )

    if args.format == "parquet" and not args.output:
        raise UserError("--format parquet needs --output FILE")
    try:
        res = Results(args.results)
        table = res.hits_arrow(args.min_plddt, args.min_ptm, args.sample,
                               with_sequence=args.format in ("fasta", "parquet", "json"))
    except (FileNotFoundError, RecordNotFound, ValueError) as err:
        raise UserError(str(err)) from err
    settings = {"min_plddt": args.min_plddt, "min_ptm": args.min_ptm,
                "samples": args.sample, "results": str(args.results)}
    describe = tuple(c for c in FASTA_FIELDS if c in table.column_names)
    try:
        if args.output and args.format == "parquet":
            write_parquet_atomic(table, args.output, {"hits": settings})
        elif args.output and args.format == "fasta":
            write_fasta_file(table.to_batches(), args.output, describe=describe)
        elif args.output:
            res.con.register("esmpipe_hits", table)
            copy_to(res.con, "SELECT * FROM esmpipe_hits", args.format, args.output)
        elif args.format == "fasta":
            write_fasta(table.to_batches(), sys.stdout, describe=describe)
        elif table.num_rows:
            write_batches(iter(table.to_batches()), args.format, sys.stdout)
        elif args.format in ("tsv", "csv"):  # no hits: the header still says the columns
            sys.stdout.write(("," if args.format == "csv" else "\t").join(table.column_names)
                             + "\n")
    except BrokenPipeError:
        quiet_broken_pipe()
    finally:
        res.close()
    print(f"esmpipe hits: {table.num_rows} records above mean pLDDT {args.min_plddt:g} and "
          f"pTM {args.min_ptm:g}", file=sys.stderr)
    return 0
