"""Inputs of `esmpipe embed` / `esmpipe fold`: FASTA or a shard Parquet, to distinct sequences.

A shard Parquet (recognised by its "PAR1" magic bytes) must have the columns
`seq_hash` and `sequence`; anything else is read as FASTA (plain or gzip).
Every sequence is normalised again (`esmpipe.io.sequences`): sequences whose
status is not "ok" are skipped with a warning (the proteins table from
`esmpipe ingest` already reports them), and in a shard the stored `seq_hash`
must equal the hash of the normalised sequence, so a stale or hand-edited
shard cannot attach results to the wrong key. Duplicates collapse to their
first occurrence: each distinct sequence is computed once per run.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from esmpipe.io.fasta import read_fasta
from esmpipe.io.sequences import normalise_sequence, seq_hash
from esmpipe.status import OK

log = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"


class InputError(ValueError):
    """An input file that cannot be used; the message names the file and the record."""


@dataclass
class Inputs:
    """Distinct valid sequences of one input file, keyed by seq_hash, in first-seen order."""

    hashes: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    records: int = 0  # input records read
    skipped: Counter = field(default_factory=Counter)  # normalisation status -> count

    def add(self, key: str, sequence: str, seen: set[str]) -> None:
        if key not in seen:
            seen.add(key)
            self.hashes.append(key)
            self.sequences.append(sequence)


def is_parquet(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def read_inputs(path: str | os.PathLike[str]) -> Inputs:
    """Read FASTA or shard Parquet into distinct "ok" sequences; raises InputError or FastaError."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file; check the input path")
    inputs = Inputs()
    seen: set[str] = set()
    if is_parquet(path):
        schema = pq.read_schema(path)
        missing = [c for c in ("seq_hash", "sequence") if c not in schema.names]
        if missing:
            raise InputError(
                f"{path}: a shard Parquet needs the columns seq_hash and sequence; "
                f"missing {', '.join(missing)}"
            )
        table = pq.read_table(path, columns=["seq_hash", "sequence"])
        for row, (key, raw) in enumerate(
            zip(table.column("seq_hash").to_pylist(), table.column("sequence").to_pylist(),
                strict=True)
        ):  # fmt: skip
            inputs.records += 1
            sequence, status = normalise_sequence(raw or "")
            if status != OK:
                inputs.skipped[status] += 1
                continue
            expected = seq_hash(sequence)
            if key != expected:
                raise InputError(
                    f"{path}: row {row}: seq_hash {key!r} is not the hash of its sequence "
                    f"({expected}); rebuild the shard from the proteins table"
                )
            inputs.add(key, sequence, seen)
    else:
        for record in read_fasta(path):
            inputs.records += 1
            sequence, status = normalise_sequence(record.sequence)
            if status != OK:
                inputs.skipped[status] += 1
                continue
            inputs.add(seq_hash(sequence), sequence, seen)
    if inputs.skipped:
        log.warning(
            "%s: skipped %d sequences that are not valid proteins (%s)",
            path,
            sum(inputs.skipped.values()),
            ", ".join(f"{k}={v}" for k, v in sorted(inputs.skipped.items())),
        )
    return inputs
