"""The `esmpipe` command line.

Each subcommand lives in its own module under `esmpipe.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` (a callable taking
the parsed namespace and returning an exit code). Modules are imported only when
listed here, so a broken optional command does not take the others down.

`esmpipe COMMAND ...` imports only COMMAND's module: a workflow runs thousands of
short commands (one `esmpipe ingest` per sample), and each would otherwise pay
for importing every command's dependencies (DuckDB, pandas, the models) first.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Command name -> its module, in the order `--help` lists them. `esmpipe COMMAND`
# imports only that module (tests/commands/test_cli.py checks that this table
# matches what the modules register; a command missing here still works, after
# importing every module).
COMMANDS = {
    "init-model": "esmpipe.commands.init_model",
    "ingest": "esmpipe.commands.ingest",
    "shard": "esmpipe.commands.shard",
    "embed": "esmpipe.commands.embed",
    "fold": "esmpipe.commands.fold",
    "gather": "esmpipe.commands.gather",
    "query": "esmpipe.commands.query",
    "hits": "esmpipe.commands.hits",
    "export": "esmpipe.commands.export",
    "similar": "esmpipe.commands.similar",
    "report-stats": "esmpipe.commands.report_stats",
    "cache-key": "esmpipe.commands.cache_key",  # cache-key, fetch-model (workflow helper)
    "fetch-model": "esmpipe.commands.cache_key",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


class UserError(Exception):
    """An error caused by input or configuration; printed without a traceback."""


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The command line with the subcommands of `modules` (default: all of them)."""
    from esmpipe import __version__

    parser = argparse.ArgumentParser(
        prog="esmpipe",
        description="Screen proteins with ESM-2 embeddings and ESMFold structures.",
    )
    parser.add_argument("--version", action="version", version=f"esmpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def _command_modules(argv: list[str]) -> tuple[str, ...]:
    """The module of the command `argv` names, or every module (`--help`, a typo)."""
    # The top-level options take no value, so the first word that is not an
    # option is the command.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    module = COMMANDS.get(command or "")
    return (module,) if module else COMMAND_MODULES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_modules(argv))
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
