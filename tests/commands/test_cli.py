"""The command line imports only the command it runs (workflow jobs start thousands of
short `esmpipe` processes), and the table that makes that possible stays true."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from esmpipe import cli

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo"


def _registered(module: str) -> list[str]:
    parser = cli.build_parser((module,))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_command_table_matches_what_the_modules_register():
    registered = {name: module for module in cli.COMMAND_MODULES for name in _registered(module)}
    assert registered == cli.COMMANDS


def test_a_command_builds_only_its_own_parser():
    assert cli._command_modules(["-v", "ingest", "--sample", "s"]) == ("esmpipe.commands.ingest",)
    assert cli._command_modules(["fetch-model", "--model", "m"]) == ("esmpipe.commands.cache_key",)
    # No command, or one that is not in the table: every module (help lists them all).
    assert cli._command_modules(["--help"]) == cli.COMMAND_MODULES
    assert cli._command_modules(["no-such-command"]) == cli.COMMAND_MODULES


# Run in a fresh interpreter: what a command imports, and that it still works.
PROBE = """
import json, sys
from esmpipe.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("torch", "duckdb", "pandas", "esmpipe.models", "esmpipe.pipeline.query")
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""


def _probe(*argv: str | Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["protein", "contigs"])
def test_ingest_imports_neither_pandas_nor_torch_nor_duckdb(tmp_path, kind):
    # pandas: pyarrow imports it on the first `pa.array(list)` (0.28 CPU s a job).
    fasta = tmp_path / "s.faa"
    fasta.write_text(">p1\nMKVLAAGIVG\n")
    if kind == "contigs":  # genes are called: every column gets values
        fasta = DEMO / "sample_c.fna.gz"
    out = tmp_path / "s.parquet"
    result = _probe("ingest", "--sample", "s", "--type", kind, "--input", fasta,
                    "--output", out)  # fmt: skip
    assert result["code"] == 0 and out.is_file()
    if kind == "contigs":
        assert pq.read_table(out, columns=["contig"])["contig"].null_count == 0
        assert (tmp_path / "s.contigs.parquet").is_file()
    assert result["imported"] == []


@pytest.mark.parametrize("command", ["shard", "gather", "cache-key"])
def test_bookkeeping_commands_start_without_torch(command):
    result = _probe(command, "--help")
    assert result["code"] == 0
    assert "torch" not in result["imported"] and "esmpipe.models" not in result["imported"]


def test_help_still_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "esmpipe.cli", "--help"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    for name in cli.COMMANDS:
        assert name in out
