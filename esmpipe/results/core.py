"""`Results`: one results folder as DuckDB views, with the questions users ask of it.

Records are named as users know them: a `protein_id` (the FASTA id or called
gene), `SAMPLE/PROTEIN_ID` where the same id occurs in several samples with
different sequences, or a `seq_hash`. Nothing here builds a path from a name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from esmpipe.io.tables import read_metadata
from esmpipe.pipeline.query import TABLES, connect, table_sources, view_columns

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

HASH = re.compile(r"^[0-9a-f]{32,128}$")
STRUCTURE_FORMATS = ("pdb", "cif")
# Hit columns besides the record's own, taken from the structures table when present.
HIT_SCORES = ("mean_plddt", "ptm", "max_pae", "mean_pae", "flags", "recycles")


class RecordNotFound(KeyError):
    """An id, `SAMPLE/ID` or seq_hash that names nothing (or nothing with that data)."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0]) if self.args else ""


class Results:
    """A results folder (`results/` of a run): SQL, hits, structures, similarity.

    Tables are read where they lie (Parquet parts, any nesting), nothing is loaded
    until asked for. `index_dir` is where `similar` keeps its vector index (default:
    `DIR/.index`, or a per-user cache folder when DIR is read-only).
    """

    def __init__(self, path: str | os.PathLike, *,
                 index_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.con = connect(self.path)
        self.tables = [name for name in TABLES if name in table_sources(self.path)]

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, tables={self.tables})"

    def relation(self, name: str) -> duckdb.DuckDBPyRelation:
        """A table or view as a lazy DuckDB relation (filter, project, aggregate, ...)."""
        if name not in self.tables and name not in ("sequences", "records"):
            raise RecordNotFound(
                f"no table {name!r} under {self.path}; it has {', '.join(self.tables)}"
            )
        return self.con.table(name)

    @property
    def proteins(self) -> duckdb.DuckDBPyRelation:
        return self.relation("proteins")

    @property
    def structures(self) -> duckdb.DuckDBPyRelation:
        return self.relation("structures")

    @property
    def embeddings(self) -> duckdb.DuckDBPyRelation:
        return self.relation("embeddings")

    @property
    def contigs(self) -> duckdb.DuckDBPyRelation:
        return self.relation("contigs")

    @property
    def sequences(self) -> duckdb.DuckDBPyRelation:
        """Per distinct sequence: `n_samples`, `n_records`, `samples` (the prevalence)."""
        return self.relation("sequences")

    @property
    def records(self) -> duckdb.DuckDBPyRelation:
        """Per input record: the proteins row, its structure's scores and prevalence."""
        return self.relation("records")

    def columns(self, name: str) -> list[str]:
        return view_columns(self.con, name) if self.has(name) else []

    def has(self, name: str) -> bool:
        return name in self.tables or (name in ("sequences", "records") and
                                       "proteins" in self.tables)

    def files(self, name: str) -> list[Path]:
        """The Parquet files of a table, sorted (one file or every part, any nesting)."""
        path = self.path / name
        if path.is_dir():
            return sorted(path.rglob("*.parquet"))
        single = self.path / f"{name}.parquet"
        return [single] if single.is_file() else []

    def metadata(self, name: str) -> dict[str, Any]:
        """The esmpipe metadata of a table's first part (model, revision, settings...).

        A gathered table may list its parts' metadata under "parts"; the first part's
        keys are then merged in underneath the table's own.
        """
        files = self.files(name)
        if not files:
            return {}
        meta = read_metadata(files[0])
        parts = meta.get("parts")
        if isinstance(parts, list) and parts and isinstance(parts[0], dict):
            meta = {**parts[0], **{k: v for k, v in meta.items() if k != "parts"}}
        return meta

    # -- SQL --------------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] | None):
        try:
            return self.con.sql(sql, params=params)
        except duckdb.Error as err:
            raise ValueError(
                f"query failed: {err}\nthe tables under {self.path} are "
                f"{', '.join(self.tables)} (views: sequences, records)"
            ) from err

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
              ) -> pd.DataFrame:
        """Run SQL (with `?` or `$name` parameters) and return a pandas DataFrame."""
        return self.query_arrow(sql, params).to_pandas()

    def query_arrow(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
                    ) -> pa.Table:
        """Run SQL and return a pyarrow Table."""
        result = self._run(sql, params)
        if result is None:
            raise ValueError("the statement returns no rows; give a SELECT query")
        return result.to_arrow_table()

    # -- hits -------------------------------------------------------------------

    def hits_sql(
        self,
        *,
        samples: Iterable[str] | None = None,
        with_sequence: bool = True,
    ) -> str:
        """The SELECT behind `hits` with parameters $min_plddt, $min_ptm (and $samples)."""
        if not self.has("structures"):
            raise RecordNotFound(f"no structures table under {self.path} (folding off?)")
        structure_columns = set(self.columns("structures"))
        protein_columns = set(self.columns("proteins"))
        select = ["p.sample", "p.protein_id", "p.seq_hash", "p.length"]
        select += [f"s.{c}" for c in HIT_SCORES if c in structure_columns]
        select += ["q.n_samples", "q.n_records"]
        if with_sequence and "sequence" in protein_columns:
            select.append("p.sequence")
        where = "s.mean_plddt > $min_plddt AND s.ptm > $min_ptm"
        if samples is not None:
            where += " AND list_contains($samples, p.sample)"
        return (
            f"SELECT {', '.join(select)} FROM proteins p "
            "JOIN structures s USING (seq_hash) JOIN sequences q USING (seq_hash) "
            f"WHERE {where} ORDER BY p.sample, s.mean_plddt DESC, p.protein_id"
        )

    def hits_arrow(
        self,
        min_plddt: float = 70.0,
        min_ptm: float = 0.7,
        samples: Iterable[str] | None = None,
        *,
        with_sequence: bool = True,
    ) -> pa.Table:
        params: dict[str, Any] = {"min_plddt": float(min_plddt), "min_ptm": float(min_ptm)}
        samples = None if samples is None else [str(s) for s in samples]
        if samples is not None:
            params["samples"] = samples
        sql = self.hits_sql(samples=samples, with_sequence=with_sequence)
        return self.query_arrow(sql, params)

    def hits(
        self,
        min_plddt: float = 70.0,
        min_ptm: float = 0.7,
        samples: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Input records whose structure has mean pLDDT > `min_plddt` (0-100) and pTM >
        `min_ptm` (strictly above, as the ESM Metagenomic Atlas calls high confidence),
        with their scores, prevalence (`n_samples`, `n_records`) and sequence."""
        return self.hits_arrow(min_plddt, min_ptm, samples).to_pandas()

    # -- naming records ---------------------------------------------------------

    def resolve(self, name: str, *, sample: str | None = None) -> str:
        """The seq_hash that `name` (seq_hash, protein_id or SAMPLE/PROTEIN_ID) names."""
        return self.resolve_records(name, sample=sample)[0][2]

    def resolve_records(self, name: str, *, sample: str | None = None
                        ) -> list[tuple[str, str, str]]:
        """(sample, protein_id, seq_hash) of the records `name` names, all with one
        sequence; raises RecordNotFound (with what to do) when none or ambiguous."""
        name = str(name)
        if sample is None and HASH.match(name):
            rows = self.con.sql(
                "SELECT sample, protein_id, seq_hash FROM proteins WHERE seq_hash = ? "
                "ORDER BY sample, protein_id", params=[name]).fetchall()
            if rows:
                return rows
        candidates = [(sample, name)]
        if sample is None and "/" in name:
            head, tail = name.split("/", 1)
            candidates.append((head, tail))
        for want_sample, protein_id in candidates:
            sql = "SELECT sample, protein_id, seq_hash, status FROM proteins WHERE protein_id = ?"
            params: list[Any] = [protein_id]
            if want_sample is not None:
                sql += " AND sample = ?"
                params.append(want_sample)
            rows = self.con.sql(sql + " ORDER BY sample", params=params).fetchall()
            if not rows:
                continue
            hashes = {r[2] for r in rows}
            if hashes == {None}:
                raise RecordNotFound(
                    f"{name!r} has no sequence to look up (status {rows[0][3]})")
            if len(hashes) > 1:
                where = ", ".join(f"{r[0]}/{r[1]}" for r in rows)
                raise RecordNotFound(
                    f"{name!r} names records with different sequences ({where}); "
                    "say which as SAMPLE/PROTEIN_ID or give its seq_hash")
            return [(r[0], r[1], r[2]) for r in rows]
        raise RecordNotFound(f"no record {name!r} under {self.path} "
                             "(give a protein_id, SAMPLE/PROTEIN_ID or seq_hash)")

    # -- structures -------------------------------------------------------------

    def structure(self, name: str, format: str = "pdb", *, sample: str | None = None) -> str:
        """The predicted structure of a record or seq_hash as PDB or mmCIF text, with
        the per-atom pLDDT (0-100) in the B-factor column."""
        from esmpipe.io.structure import convert_pdb

        if format not in STRUCTURE_FORMATS:
            raise ValueError(f"format must be one of {', '.join(STRUCTURE_FORMATS)}")
        if not self.has("structures"):
            raise RecordNotFound(f"no structures table under {self.path} (folding off?)")
        digest = self.resolve(name, sample=sample) if not self._is_structure(name) else name
        rows = self.con.sql("SELECT pdb FROM structures WHERE seq_hash = ? LIMIT 1",
                            params=[digest]).fetchall()
        row = rows[0] if rows else None
        if row is None or row[0] is None:
            raise RecordNotFound(f"{name!r} has no structure (not folded: see its status)")
        return convert_pdb(row[0], format, name=digest[:16])

    def _is_structure(self, name: str) -> bool:
        if not HASH.match(str(name)):
            return False
        return self.con.sql("SELECT count(*) FROM structures WHERE seq_hash = ?",
                            params=[name]).fetchall()[0][0] > 0

    # -- similarity -------------------------------------------------------------

    def similar(self, query: str, k: int = 10, *, column: str = "embedding",
                sample: str | None = None) -> pd.DataFrame:
        """The `k` distinct sequences nearest to `query` by cosine similarity of their
        embeddings (the query itself first when it is in the cohort).

        `query` is a protein_id, SAMPLE/PROTEIN_ID, seq_hash or an amino-acid sequence;
        a sequence not in the cohort is embedded with the model the table was made with.
        """
        from esmpipe.results.similar import similar

        return similar(self, query, k=k, column=column, sample=sample).to_pandas()
