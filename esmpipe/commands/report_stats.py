"""`esmpipe report-stats`: counts table and plots of a results folder for the report."""

from __future__ import annotations

import argparse

from esmpipe.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report-stats",
        help="counts (records, distinct, folded, high confidence, skipped) and pLDDT plots",
    )
    p.add_argument("--results", default="results", help="results folder")
    p.add_argument("--output-dir", required=True,
                   help="gets counts.tsv, plddt_per_sample.png, ptm_vs_plddt.png, "
                        "length_vs_plddt.png, hits_per_sample.png, embedding_pca.png, "
                        "lm_scores.png")
    p.add_argument("--min-plddt", type=float, default=70.0,
                   help="high confidence: mean pLDDT above this (0-100)")
    p.add_argument("--min-ptm", type=float, default=0.7, help="high confidence: pTM above this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from esmpipe.pipeline.report import write_report

    try:
        write_report(args.results, args.output_dir, min_plddt=args.min_plddt,
                     min_ptm=args.min_ptm)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    return 0
