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
from typing import TYPE_CHECKING, Any

import numpy as np

from esmpipe.results.core import RecordNotFound
from esmpipe.results.index import VectorIndex, default_index_dir

if TYPE_CHECKING:
    import pyarrow as pa

    from esmpipe.results.core import Results

log = logging.getLogger(__name__)

LAYER_COLUMN = re.compile(r"^layer_(\d+)$")
EMBED_DTYPES = ("float32", "float16", "bfloat16")


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
        if sample is not None or status != "ok" or not query.strip().isalpha():
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
    import pyarrow as pa

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
    hashes = [h for h, _ in hits]
    details = _details(results, hashes)
    columns: dict[str, list[Any]] = {
        "rank": list(range(1, len(hits) + 1)),
        "seq_hash": hashes,
        "similarity": [round(s, 6) for _, s in hits],
    }
    for name, values in details.items():
        columns[name] = [values.get(h) for h in hashes]
    return pa.Table.from_pydict(columns)


def _details(results: Results, hashes: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"length": {}, "n_samples": {}, "n_records": {},
                                      "record": {}}
    if not hashes:
        return out
    rows = results.con.sql(
        "SELECT seq_hash, any_value(length), count(DISTINCT sample), count(*), "
        "min(sample || '/' || protein_id) FROM proteins "
        "WHERE list_contains($hashes, seq_hash) GROUP BY seq_hash",
        params={"hashes": hashes}).fetchall()
    for h, length, n_samples, n_records, record in rows:
        out["length"][h] = length
        out["n_samples"][h] = n_samples
        out["n_records"][h] = n_records
        out["record"][h] = record
    if results.has("structures"):
        out["mean_plddt"], out["ptm"] = {}, {}
        for h, plddt, ptm in results.con.sql(
                "SELECT seq_hash, mean_plddt, ptm FROM structures "
                "WHERE list_contains($hashes, seq_hash)", params={"hashes": hashes}).fetchall():
            out["mean_plddt"][h] = None if plddt is None else round(plddt, 3)
            out["ptm"][h] = None if ptm is None else round(ptm, 4)
    return out


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
    status = table.column("status")[0].as_py() if "status" in table.column_names else "ok"
    value = table.column("embedding")[0].as_py()
    if status != "ok" or value is None:
        raise RecordNotFound(f"the query sequence could not be embedded (status {status})")
    return np.asarray(value, dtype=np.float32)
