"""Predicted structures as files: one per distinct structure, plus an index TSV.

Files are named `<seq_hash>.pdb` / `<seq_hash>.cif` (the hash is checked to be
hex before it becomes a name), never after a FASTA id: ids come from users'
files and may hold `/`, `..`, spaces or quotes. `index.tsv` maps every selected
record (sample, protein_id) to its file; a record without a structure (too long
to fold, not computed, ...) or a requested id that names nothing is listed with
its status and no file, so the index accounts for every request.

The output folder is written whole into a temporary folder and renamed into
place (`esmpipe.io.tables.atomic_dir`); an existing folder is replaced only when
it is an earlier export (it holds `index.tsv`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from esmpipe.io.structure import convert_pdb
from esmpipe.io.tables import atomic_dir
from esmpipe.results.core import HASH, RecordNotFound
from esmpipe.status import EXPORTED, NO_STRUCTURE, NOT_FOUND, OK

if TYPE_CHECKING:
    from esmpipe.results.core import Results

INDEX = "index.tsv"
EXTENSIONS = {"pdb": "pdb", "cif": "cif"}
INDEX_COLUMNS = ("file", "sample", "protein_id", "seq_hash", "status", "mean_plddt", "ptm",
                 "query")


@dataclass
class ExportSummary:
    files: int
    records: int
    missing: int
    index: Path


def read_ids(path: str | os.PathLike) -> list[tuple[str | None, str]]:
    """(sample or None, name) per line of an ids file: `NAME` (protein_id,
    SAMPLE/PROTEIN_ID or seq_hash) or `SAMPLE<TAB>PROTEIN_ID`. Blank lines and lines
    starting with `#` are skipped; spaces inside an id are kept."""
    out: list[tuple[str | None, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            if "\t" in line:
                sample, name = line.split("\t", 1)
                out.append((sample.strip(), name.strip()))
            else:
                out.append((None, line.strip()))
    return out


def match_ids(results: Results, ids: list[tuple[str | None, str]]) -> pa.Table:
    """Records the ids name, in one pass of joins (fine for very long id lists):
    line, query, sample, protein_id, seq_hash, status; a line that names nothing
    gets one row with null sample."""
    wanted = pa.table({
        "line": pa.array(range(len(ids)), pa.int64()),
        "want_sample": pa.array([s for s, _ in ids], pa.string()),
        "name": pa.array([n for _, n in ids], pa.string()),
        "head": pa.array([n.split("/", 1)[0] if s is None and "/" in n else None
                          for s, n in ids], pa.string()),
        "tail": pa.array([n.split("/", 1)[1] if s is None and "/" in n else None
                          for s, n in ids], pa.string()),
    })
    con = results.con
    con.register("esmpipe_wanted", wanted)
    try:
        return con.sql("""
            WITH hit AS (
                SELECT w.line, p.sample, p.protein_id, p.seq_hash, p.status
                FROM esmpipe_wanted w JOIN proteins p ON p.protein_id = w.name
                WHERE w.want_sample IS NULL
                UNION
                SELECT w.line, p.sample, p.protein_id, p.seq_hash, p.status
                FROM esmpipe_wanted w JOIN proteins p ON p.seq_hash = w.name
                WHERE w.want_sample IS NULL
                UNION
                SELECT w.line, p.sample, p.protein_id, p.seq_hash, p.status
                FROM esmpipe_wanted w JOIN proteins p
                  ON p.sample = w.head AND p.protein_id = w.tail
                UNION
                SELECT w.line, p.sample, p.protein_id, p.seq_hash, p.status
                FROM esmpipe_wanted w JOIN proteins p
                  ON p.sample = w.want_sample AND p.protein_id = w.name
            )
            SELECT w.line, w.name AS query, h.sample, h.protein_id, h.seq_hash, h.status
            FROM esmpipe_wanted w LEFT JOIN hit h USING (line)
            ORDER BY w.line, h.sample, h.protein_id
        """).to_arrow_table()
    finally:
        con.unregister("esmpipe_wanted")


def match_where(results: Results, where: str) -> pa.Table:
    """Records of the `records` view (proteins + structure scores + prevalence) that
    satisfy a SQL condition, e.g. `mean_plddt > 60 AND sample = 'gut_01'`."""
    try:
        return results.con.sql(
            "SELECT NULL::VARCHAR AS query, sample, protein_id, seq_hash, status "
            f"FROM records WHERE ({where}) ORDER BY sample, protein_id").to_arrow_table()
    except Exception as err:  # duckdb.Error, but also a parse error of the user's text
        raise ValueError(f"--where {where!r}: {err}\ncolumns: "
                         f"{', '.join(results.columns('records'))}") from err


def file_name(seq_hash: str, number: int, fmt: str) -> str:
    """A file name that depends only on the digest (or a counter), never on an id."""
    stem = seq_hash if HASH.match(seq_hash or "") else f"structure-{number:06d}"
    return f"{stem}.{EXTENSIONS[fmt]}"


def export_structures(
    results: Results,
    output: str | os.PathLike,
    *,
    fmt: str = "pdb",
    ids: list[tuple[str | None, str]] | None = None,
    where: str | None = None,
) -> ExportSummary:
    """Write the structures of the records selected by `ids` or `where` into `output`."""
    if fmt not in EXTENSIONS:
        raise ValueError(f"format must be one of {', '.join(EXTENSIONS)}")
    if (ids is None) == (where is None):
        raise ValueError("give either ids or where")
    if not results.has("structures"):
        raise RecordNotFound(f"no structures table under {results.path} (folding off?)")
    output = Path(output)
    if output.exists() and (not output.is_dir() or
                            (any(output.iterdir()) and not (output / INDEX).is_file())):
        raise FileExistsError(f"{output} exists and is not an earlier export (no {INDEX}); "
                              "choose a new folder")
    selected = match_ids(results, ids) if ids is not None else match_where(results, where)
    rows = selected.to_pylist()
    hashes = sorted({r["seq_hash"] for r in rows if r["seq_hash"]})
    scores: dict[str, tuple] = {}
    names: dict[str, str] = {}
    con = results.con
    con.register("esmpipe_hashes", pa.table({"seq_hash": pa.array(hashes, pa.string())}))
    with atomic_dir(output) as tmp:
        try:
            reader = con.sql(
                "SELECT s.seq_hash, s.pdb, s.mean_plddt, s.ptm FROM structures s "
                "SEMI JOIN esmpipe_hashes h USING (seq_hash) "
                "WHERE s.pdb IS NOT NULL ORDER BY s.seq_hash").to_arrow_reader(256)
            for batch in reader:
                for digest, pdb, plddt, ptm in zip(*batch.to_pydict().values(), strict=True):
                    if digest in names:
                        continue
                    name = file_name(digest, len(names) + 1, fmt)
                    names[digest] = name
                    scores[digest] = (plddt, ptm)
                    (tmp / name).write_text(convert_pdb(pdb, fmt, name=digest[:16]))
        finally:
            con.unregister("esmpipe_hashes")
        missing = 0
        with open(tmp / INDEX, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            for r in rows:
                digest = r["seq_hash"]
                if r["sample"] is None:
                    status = NOT_FOUND
                elif digest in names:
                    status = EXPORTED
                else:
                    status = r["status"] if r["status"] not in (None, OK) else NO_STRUCTURE
                plddt, ptm = scores.get(digest, (None, None))
                missing += status != EXPORTED
                writer.writerow([names.get(digest, ""), r["sample"] or "", r["protein_id"] or "",
                                 digest or "", status, "" if plddt is None else f"{plddt:.3f}",
                                 "" if ptm is None else f"{ptm:.4f}", r["query"] or ""])
    return ExportSummary(files=len(names), records=len(rows), missing=missing,
                         index=output / INDEX)
