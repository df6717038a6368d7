"""`esmpipe gather`: build the cohort's result tables from ingest tables and cache parts."""

from __future__ import annotations

import argparse

from esmpipe.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gather",
        help="gather results/proteins, results/embeddings or results/structures",
        description=(
            "--table embeddings|structures: the stage's results for the plan's cohort "
            "(from old and new cache parts) plus a (seq_hash, status) table. "
            "--table proteins: one row per input record with each stage's status. "
            "--table contigs: the contigs tables (<ingest>.contigs.parquet) of the samples."
        ),
    )
    p.add_argument("--table", required=True,
                   choices=("proteins", "embeddings", "structures", "contigs"))
    p.add_argument("--output", required=True, help="output folder (replaced)")
    p.add_argument("--plan", help="the stage's plan folder (embeddings, structures)")
    p.add_argument("--status-output", help="(seq_hash, status) Parquet (embeddings, structures)")
    p.add_argument("--ingest", nargs="+", metavar="PARQUET",
                   help="ingest tables (proteins, contigs)")
    p.add_argument("--ingest-list", metavar="FILE",
                   help="a file listing ingest tables, one path a line; adds to --ingest")
    p.add_argument("--status", action="append", default=[], metavar="STAGE=PARQUET",
                   help="a stage's status table (proteins); repeat per stage")
    p.add_argument("--allow-missing", action="store_true",
                   help="a missing cache part (its job failed) gives its sequences status "
                        "not_computed instead of an error (embeddings, structures)")
    p.add_argument("--log-pattern", metavar="PATTERN",
                   help="log of a cache part's job, e.g. 'logs/{stage}/{shard}.log', recorded "
                        "in the `log` column of not_computed sequences")
    p.add_argument("--reuse-dir", metavar="DIR",
                   help="a folder kept with hard links to the gathered table's files: the "
                        "next gather reuses unchanged files from it even when --output was "
                        "deleted meanwhile (Snakemake deletes a rule's outputs before it runs)")
    add_resource_arguments(p)
    p.set_defaults(func=run)


def add_resource_arguments(p: argparse.ArgumentParser) -> None:
    """--memory-limit and --threads of the step's DuckDB session."""
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="memory for DuckDB, e.g. 1GB or 4000MB (else $ESMPIPE_DUCKDB_MEMORY, "
                        "else 1GB); what does not fit spills beside the output")
    p.add_argument("--threads", type=int, help="threads for DuckDB (default: CPUs available)")


def run(args: argparse.Namespace) -> int:
    from esmpipe.pipeline.gather import (
        STAGES,
        GatherError,
        gather_contigs,
        gather_proteins,
        gather_stage,
    )
    from esmpipe.pipeline.plan import PlanError, ingest_inputs

    try:
        if args.table == "proteins":
            if not args.ingest and not args.ingest_list:
                raise UserError("--table proteins needs --ingest or --ingest-list")
            status = {}
            for item in args.status:
                stage, sep, path = item.partition("=")
                if not sep or stage not in STAGES:
                    raise UserError(f"--status {item!r}: expected STAGE=PARQUET, STAGE one of "
                                    f"{', '.join(STAGES)}")
                status[stage] = path
            gather_proteins(ingest_inputs(args.ingest, args.ingest_list), status, args.output,
                            memory_limit=args.memory_limit, threads=args.threads,
                            reuse_dir=args.reuse_dir)
        elif args.table == "contigs":
            if not args.ingest and not args.ingest_list:
                raise UserError("--table contigs needs --ingest or --ingest-list")
            gather_contigs(ingest_inputs(args.ingest, args.ingest_list), args.output)
        else:
            if not args.plan or not args.status_output:
                raise UserError(f"--table {args.table} needs --plan and --status-output")
            gather_stage(args.plan, args.output, args.status_output,
                         allow_missing=args.allow_missing, log_pattern=args.log_pattern,
                         memory_limit=args.memory_limit, threads=args.threads,
                         reuse_dir=args.reuse_dir)
    except (GatherError, PlanError) as err:
        raise UserError(str(err)) from err
    return 0
