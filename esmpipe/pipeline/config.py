"""Validation of the workflow config and sample sheet, with messages a user can act on.

The JSON schemas live in `workflow/schemas/`; the Snakefile loads them and passes
them here, so the package does not depend on where the workflow is deployed.
Defaults declared in the schema are filled in, so a config with only `samples`,
`embed.model` and `fold.model` runs.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

STAGES = ("embed", "fold")


class ConfigError(ValueError):
    """A config or sample sheet that does not match its schema."""


def _field_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """Lines naming the field and the cause of a validation error."""
    # `oneOf`/`anyOf` failures (e.g. `embed: false | {...}`) hide the useful reason
    # in their context: report the errors of the branch that fits the value best,
    # i.e. the one that did not fail on the value's type alone.
    if error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)

        depth = len(error.absolute_path)

        def fit(errs: list[jsonschema.ValidationError]) -> tuple[int, int]:
            shallow_type = any(
                e.validator in ("type", "const") and len(e.absolute_path) == depth for e in errs
            )
            return (0 if shallow_type else 1, max(len(e.absolute_path) for e in errs))

        best = max(branches.values(), key=fit)
        if fit(best)[0]:
            return [line for sub in best for line in _describe(sub)]
    return [f"{_field_path(error)}: {error.message}"]


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    """Fill in `default` values for missing properties, following `$ref`s and the
    object branch of `oneOf`/`anyOf` that the instance matches."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), f"only local $refs are supported: {ref}"
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        _fill_defaults(instance, node, root)
        return
    for branch in schema.get("allOf", []):
        _fill_defaults(instance, branch, root)
    for key in ("oneOf", "anyOf"):
        for branch in schema.get(key, []):
            if _is_valid(instance, branch, root):
                _fill_defaults(instance, branch, root)
                break
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in instance and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                _fill_defaults(instance[name], sub, root)


def _is_valid(instance: Any, branch: dict, root: dict) -> bool:
    # Carry the root's `$defs` so that `$ref`s inside the branch resolve.
    return jsonschema.Draft202012Validator({"$defs": root.get("$defs", {}), **branch}).is_valid(
        instance
    )


def validate_config(config: dict, schema: dict) -> dict:
    """Return a copy of `config` validated against `schema` with defaults filled in.

    Raises ConfigError naming the offending field, e.g. `fold.max_length: 0 is less
    than the minimum of 1`.
    """
    config = copy.deepcopy(config)
    for stage in STAGES:
        # `snakemake --config fold=false` passes the string "false".
        if isinstance(config.get(stage), str) and config[stage].lower() in ("false", "off"):
            config[stage] = False
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = "\n".join(f"  - {line}" for e in errors for line in _describe(e))
        raise ConfigError(f"invalid workflow config:\n{lines}")
    _fill_defaults(config, schema, schema)
    if not any(config.get(stage) for stage in STAGES):
        raise ConfigError("invalid workflow config: both `embed` and `fold` are switched off")
    return config


@dataclass(frozen=True)
class Sample:
    """One row of the sample sheet; `path` resolved against the sheet's folder."""

    sample: str
    path: str
    type: str


def read_sample_sheet(path: str | os.PathLike, schema: dict) -> list[Sample]:
    """Read and validate a tab-separated sample sheet (`sample`, `path`, `type`).

    Each row is checked against `schema`; errors name the sheet, the row (line
    number and sample name) and the field. Relative paths in the sheet are taken
    relative to the sheet's own folder, so a sheet and its FASTA files move together.
    """
    sheet = Path(path)
    if not sheet.is_file():
        raise ConfigError(f"sample sheet {sheet} does not exist (config key `samples`)")
    lines = [ln.rstrip("\n\r") for ln in sheet.read_text().splitlines()]
    rows = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")]
    if not rows:
        raise ConfigError(f"sample sheet {sheet} is empty; it needs a header `sample path type`")
    header_line, header = rows[0][0], [h.strip() for h in rows[0][1].split("\t")]
    required = schema.get("required", [])
    missing = [c for c in required if c not in header]
    if missing:
        raise ConfigError(
            f"sample sheet {sheet} line {header_line}: missing column(s) {', '.join(missing)}; "
            f"the header must name the tab-separated columns {', '.join(required)}"
        )
    validator = jsonschema.Draft202012Validator(schema)
    samples: list[Sample] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line_no, line in rows[1:]:
        values = [v.strip() for v in line.split("\t")]
        if len(values) != len(header):
            problems.append(
                f"line {line_no}: {len(values)} tab-separated fields, the header has {len(header)}"
            )
            continue
        record = dict(zip(header, values, strict=True))
        where = f"line {line_no} (sample {record.get('sample', '?')!r})"
        errors = list(validator.iter_errors(record))
        for err in errors:
            problems.extend(f"{where}: {line}" for line in _describe(err))
        if errors:
            continue
        name = record["sample"]
        if name in seen:
            problems.append(f"{where}: sample name already used on line {seen[name]}")
            continue
        seen[name] = line_no
        fasta = Path(record["path"])
        if not fasta.is_absolute():
            fasta = sheet.parent / fasta
        if not fasta.is_file():
            problems.append(f"{where}: path: {fasta} does not exist")
            continue
        samples.append(Sample(sample=name, path=str(fasta), type=record["type"]))
    if problems:
        lines_txt = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid sample sheet {sheet}:\n{lines_txt}")
    if not samples:
        raise ConfigError(f"sample sheet {sheet} lists no samples")
    return samples


def cli_supports(command: str, option: str, choice: str | None = None) -> bool:
    """Whether the installed `esmpipe COMMAND` has `option` (and, given, that `choice` of it).

    The workflow uses options that parts of the project add over time only once the
    installed command line has them.
    """
    command_parser = _command_parsers().get(command)
    if command_parser is None:
        return False
    for action in command_parser._actions:
        if option in action.option_strings:
            return choice is None or (action.choices is not None and choice in action.choices)
    return False


@functools.cache
def _command_parsers() -> dict[str, Any]:
    import argparse

    from esmpipe.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)
