"""`esmpipe shard`: plan one stage of the cohort into cost-balanced shards."""

from __future__ import annotations

import argparse
import json

from esmpipe.cli import UserError
from esmpipe.commands.gather import add_resource_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shard",
        help="de-duplicate the cohort and cut uncached sequences into cost-balanced shards",
        description=(
            "Read ingest tables (one per sample), keep distinct valid sequences, drop those "
            "already in the stage's cache folder and those longer than --max-length, and "
            "write shards/<id>.parquet, cohort.parquet and manifest.json into --output-dir."
        ),
    )
    p.add_argument("--stage", required=True, choices=("embed", "fold"))
    p.add_argument("--ingest", nargs="+", metavar="PARQUET",
                   help="ingest tables of all samples of the cohort")
    p.add_argument("--ingest-list", metavar="FILE",
                   help="a file listing ingest tables, one path a line (for cohorts whose "
                        "paths exceed the command-line limit); adds to --ingest")
    p.add_argument("--cache-dir", required=True,
                   help="the stage's cache folder for these settings (<shard id>.parquet parts)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--settings", required=True,
                   help="JSON object of the settings that determine results (model, revision, "
                        "...); "
                        "its 'expect' object, if any, is what a cached part's metadata must "
                        "match to count as a hit")
    p.add_argument("--shard-size", type=float, required=True,
                   help="work per shard in units of one 100-residue sequence")
    p.add_argument("--cost-exponent", type=float, required=True,
                   help="a sequence of L residues costs (L/100)**exponent units")
    p.add_argument("--max-length", type=int, default=None,
                   help="longer sequences are not sharded (status too_long)")
    add_resource_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from esmpipe.pipeline.plan import PlanError, ingest_inputs, plan_stage

    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise UserError(f"--settings is not valid JSON: {err}") from err
    if args.shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {args.shard_size}")
    if not args.ingest and not args.ingest_list:
        raise UserError("esmpipe shard needs --ingest or --ingest-list")
    try:
        plan_stage(
            ingest_inputs(args.ingest, args.ingest_list),
            stage=args.stage,
            settings=settings,
            cache_dir=args.cache_dir,
            output_dir=args.output_dir,
            shard_size=args.shard_size,
            cost_exponent=args.cost_exponent,
            max_length=args.max_length,
            memory_limit=args.memory_limit,
            threads=args.threads,
        )
    except PlanError as err:
        raise UserError(str(err)) from err
    return 0
