"""The `esmpipe` command line.

Each subcommand lives in its own module under `esmpipe.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` (a callable taking
the parsed namespace and returning an exit code). Modules are imported only when
listed here, so `esmpipe --help` stays fast and a broken optional command does
not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "esmpipe.commands.init_model",
    "esmpipe.commands.ingest",
    "esmpipe.commands.shard",
    "esmpipe.commands.embed",
    "esmpipe.commands.fold",
    "esmpipe.commands.gather",
    "esmpipe.commands.query",
    "esmpipe.commands.hits",
    "esmpipe.commands.export",
    "esmpipe.commands.similar",
    "esmpipe.commands.report_stats",
    "esmpipe.commands.cache_key",  # cache-key, fetch-model (workflow helper)
)


class UserError(Exception):
    """An error caused by input or configuration; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from esmpipe import __version__

    parser = argparse.ArgumentParser(
        prog="esmpipe",
        description="Screen proteins with ESM-2 embeddings and ESMFold structures.",
    )
    parser.add_argument("--version", action="version", version=f"esmpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"esmpipe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
