"""Nearest sequences of the cohort by cosine similarity of their embeddings.

The query is a record (protein_id, SAMPLE/PROTEIN_ID), a seq_hash, or an
amino-acid sequence. A sequence that is not in the cohort is embedded with the
model, revision and layer recorded in the embeddings table's metadata (this is
the only path that imports torch). The search itself is an exact scan of a
float32 index (`esmpipe.results.index`), built once per table part.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from esmpipe.results.core import RecordNotFound
from esmpipe.results.index import VectorIndex, default_index_dir
from esmpipe.status import OK

if TYPE_CHECKING:
    import pyarrow as pa

    from esmpipe.results.core import Results

log = logging.getLogger(__name__)

LAYER_COLUMN = re.compile(r"^layer_(\d+)$")
EMBED_DTYPES = ("float32", "float16", "bfloat16")
# A query that names no record is read as a sequence only from this length on, so that a
# mistyped id ("nope") is an error rather than a four-residue protein.
MIN_SEQUENCE_LENGTH = 10


def vector_index(results: Results, column: str = "embedding") -> VectorIndex:
    if not results.has("embeddings"):
        raise RecordNotFound(f"no embeddings table under {results.path} (embedding off?)")
    if column not in results.columns("embeddings"):
        raise RecordNotFound(f"the embeddings table has no column {column!r}")
    folder = results.index_dir or default_index_dir(results.path)
    return VectorIndex(results.files("embeddings"), results.path / "embeddings",
                       folder / "embeddings", column)


def _query_vector(results: Results, index: VectorIndex, parts, query: str,
                  sample: str | None) -> tuple[np.ndarray, str | None, str]:
    """(vector, seq_hash if in the cohort, how the query was read)."""
    from esmpipe.io.sequences import normalise_sequence, seq_hash

    try:
        digest = results.resolve(query, sample=sample)
    except RecordNotFound as err:
        normalised, status = normalise_sequence(query)
        if sample is not None or status != OK or not query.strip().isalpha() or \
                len(normalised) < MIN_SEQUENCE_LENGTH:
            raise err from None
        digest = seq_hash(normalised)
        vector = index.find(digest, parts)
        if vector is not None:
            return vector, digest, "sequence"
        return embed_sequence(results, normalised, index.column), None, "embedded"
    vector = index.find(digest, parts)
    if vector is None:
        raise RecordNotFound(f"{query!r} has no {index.column!r} embedding "
                             "(see its status in the proteins table)")
    return vector, digest, "record"


def similar(results: Results, query: str, *, k: int = 10, column: str = "embedding",
            sample: str | None = None) -> pa.Table:
    """`k` rows, nearest first: rank, seq_hash, similarity (cosine), length, n_samples,
    n_records, record (the first SAMPLE/PROTEIN_ID with that sequence) and, when the
    structures table is there, mean_plddt and ptm. The query, when in the cohort,
    is row 1 whatever ties there are."""

    if k < 1:
        raise ValueError("k must be at least 1")
    index = vector_index(results, column)
    parts = index.parts()
    vector, digest, _ = _query_vector(results, index, parts, query, sample)
    hits = index.search(vector, k + (1 if digest else 0), parts)
    if digest is not None:
        own = [h for h in hits if h[0] == digest]
        self_score = own[0][1] if own else float(np.dot(vector, vector))
        hits = [(digest, self_score)] + [h for h in hits if h[0] != digest]
    hits = hits[:k]
    return _with_details(results, hits)


def _with_details(results: Results, hits: list[tuple[str, float]]) -> pa.Table:
    """The ranked hits joined to their prevalence and scores, as one DuckDB query.

    NOTE: built by DuckDB rather than `pa.array(...)`: pyarrow imports pandas on its
    first conversion from Python objects, which costs more than the whole search of a
    small table on a loaded 2-core machine."""
    params = {"hashes": [h for h, _ in hits], "sims": [float(s) for _, s in hits]}
    structure_join, structure_columns = "", ""
    if results.has("structures"):
        structure_join = ("LEFT JOIN (SELECT seq_hash, mean_plddt, ptm FROM structures "
                          "WHERE list_contains($hashes, seq_hash)) s USING (seq_hash)")
        structure_columns = (", round(s.mean_plddt, 3)::FLOAT AS mean_plddt, "
                             "round(s.ptm, 4)::FLOAT AS ptm")
    sql = f"""
        WITH hit AS (
            SELECT unnest($hashes) AS seq_hash, unnest($sims)::DOUBLE AS similarity,
                   unnest(range(1, len($hashes) + 1)) AS rank
        ), prevalence AS (
            SELECT seq_hash, any_value(length) AS length, count(DISTINCT sample) AS n_samples,
                   count(*) AS n_records, min(sample || '/' || protein_id) AS record
            FROM proteins WHERE list_contains($hashes, seq_hash) GROUP BY seq_hash
        )
        SELECT h.rank::INTEGER AS rank, h.seq_hash, round(h.similarity, 6) AS similarity,
               p.length, p.n_samples, p.n_records, p.record{structure_columns}
        FROM hit h LEFT JOIN prevalence p USING (seq_hash) {structure_join}
        ORDER BY h.rank
    """
    return results.con.sql(sql, params=params).to_arrow_table()


def _model_path(results: Results, model: str) -> str:
    """A relative model folder is the workflow's (its working directory holds results/)."""
    path = Path(model)
    if path.is_absolute() or path.exists():
        return model
    for base in (results.path.parent, results.path):
        if (base / path).exists():
            return str(base / path)
    return model  # a hub id


def embed_sequence(results: Results, sequence: str, column: str = "embedding", *,
                   device: str = "auto") -> np.ndarray:
    """Embed one sequence as the table's were (model, revision, layer, dtype from its
    metadata), through `esmpipe embed` itself so that pooling cannot drift."""
    import pyarrow.parquet as pq

    from esmpipe.cli import main

    meta = results.metadata("embeddings")
    model = meta.get("model")
    if not model:
        raise RecordNotFound("the embeddings table does not record its model; embed the "
                             "sequence with `esmpipe embed` and compare by hand")
    settings = meta.get("settings") or {}
    layers = meta.get("layers") or settings.get("layers")
    layer = meta.get("layer", settings.get("layer", -1))
    if isinstance(layers, list) and layers:
        layer = layers[0]
    match = LAYER_COLUMN.match(column)
    if match:
        layer = int(match.group(1))
    elif column != "embedding":
        raise RecordNotFound(f"only embedding and layer_N columns can be computed for a new "
                             f"sequence, not {column!r}")
    args = ["embed", "--model", _model_path(results, model), "--layer", str(layer),
            "--device", device]
    if meta.get("revision"):
        args += ["--revision", str(meta["revision"])]
    if meta.get("dtype") in EMBED_DTYPES:
        args += ["--dtype", meta["dtype"]]
    log.info("similar: the query is not in the cohort; embedding it with %s", model)
    with tempfile.TemporaryDirectory(prefix="esmpipe-similar-") as tmp:
        fasta, out = Path(tmp) / "query.faa", Path(tmp) / "query.parquet"
        fasta.write_text(f">query\n{sequence}\n")
        code = main([*args, "--input", str(fasta), "--output", str(out)])
        if code != 0:
            raise RecordNotFound(f"embedding the query with {model} failed (exit {code})")
        table = pq.read_table(out)
    status = table.column("status")[0].as_py() if "status" in table.column_names else OK
    value = table.column("embedding")[0].as_py()
    if status != OK or value is None:
        raise RecordNotFound(f"the query sequence could not be embedded (status {status})")
    return np.asarray(value, dtype=np.float32)
