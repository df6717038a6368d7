"""Small synthetic cohorts for the pipeline tests: ingest tables and stage outputs
shaped like `esmpipe ingest` / `esmpipe embed` / `esmpipe fold` write them."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.io.tables import write_parquet_atomic

AA = "ACDEFGHIKLMNPQRSTVWY"


def digest(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()[:32]


def protein(rng: random.Random, n: int) -> str:
    return "M" + "".join(rng.choice(AA) for _ in range(n - 1))


def write_ingest(path: Path, sample: str, records: list[tuple[str, str, str]]) -> Path:
    """records: (protein_id, sequence, status) -> an ingest table at `path`."""
    table = pa.table(
        {
            "sample": [sample] * len(records),
            "protein_id": [r[0] for r in records],
            "seq_hash": [digest(r[1]) if r[2] == "ok" else None for r in records],
            "sequence": [r[1] for r in records],
            "length": pa.array([len(r[1]) for r in records], pa.int32()),
            "status": [r[2] for r in records],
            "contig": pa.nulls(len(records), pa.string()),
            "start": pa.nulls(len(records), pa.int64()),
            "end": pa.nulls(len(records), pa.int64()),
            "strand": pa.nulls(len(records), pa.int8()),
            "partial": pa.nulls(len(records), pa.string()),
        }
    )
    write_parquet_atomic(table, path, {"sample": sample})
    return path


def fake_compute(stage: str, shard: Path, output: Path, *, fail: dict[str, str] | None = None,
                 dim: int = 8, max_length: int = 1022) -> Path:
    """What `esmpipe embed|fold --input shard --output output` writes, with fake numbers.

    `fail` maps seq_hash -> a non-ok status (e.g. out_of_memory); sequences longer
    than `max_length` (the engine's own limit) get status too_long."""
    fail = fail or {}
    rows = pq.read_table(shard).to_pylist()
    status = ["too_long" if r["length"] > max_length else fail.get(r["seq_hash"], "ok")
              for r in rows]
    columns = {
        "seq_hash": [r["seq_hash"] for r in rows],
        "length": pa.array([r["length"] for r in rows], pa.int32()),
        "status": status,
    }
    if stage == "embed":
        columns["embedding"] = pa.array(
            [[float(r["length"])] * dim if s == "ok" else None
             for r, s in zip(rows, status, strict=True)],
            pa.list_(pa.float32(), dim),
        )
    else:
        ok = [s == "ok" for s in status]
        plddt = [min(99.0, 40.0 + r["length"] / 4) if k else None
                 for r, k in zip(rows, ok, strict=True)]
        columns.update(
            mean_plddt=pa.array(plddt, pa.float32()),
            ptm=pa.array([p / 100 if p else None for p in plddt], pa.float32()),
            plddt=pa.array([[p] * r["length"] if p else None
                            for p, r in zip(plddt, rows, strict=True)], pa.list_(pa.float32())),
            max_pae=pa.array([30.0 if k else None for k in ok], pa.float32()),
            mean_pae=pa.array([10.0 if k else None for k in ok], pa.float32()),
            pdb=pa.array([f"ATOM {r['seq_hash']}\nEND\n" if k else None
                          for r, k in zip(rows, ok, strict=False)], pa.large_string()),
        )
    write_parquet_atomic(pa.table(columns), output,
                {"model": f"fake-{stage}", "revision": "r1", "max_length": max_length})
    return output


@pytest.fixture
def cohort(tmp_path: Path) -> dict:
    """Two samples sharing sequences, with an empty record, invalid characters and
    one long sequence. Returns paths and the expected distinct hashes."""
    rng = random.Random(7)
    shared = protein(rng, 60)
    a = [("a1", protein(rng, 40), "ok"), ("a2", shared, "ok"), ("a3", "", "empty"),
         ("a4", protein(rng, 250), "ok"), ("a5", "MK1", "invalid_characters")]
    b = [("b1", shared, "ok"), ("b2", protein(rng, 90), "ok"), ("b3", a[0][1], "ok"),
         ("b4", protein(rng, 30), "ok")]
    paths = [
        write_ingest(tmp_path / "ingest" / "a.parquet", "a", a),
        write_ingest(tmp_path / "ingest" / "b.parquet", "b", b),
    ]
    distinct = {digest(s) for _, s, st in a + b if st == "ok"}
    long_hash = digest(a[3][1])
    return {"ingest": paths, "distinct": distinct, "long": long_hash, "rng": rng,
            "records": len(a) + len(b), "root": tmp_path}
