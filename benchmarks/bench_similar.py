"""Whole-process timing of `esmpipe similar` on a synthetic cohort of N embeddings.

Builds (once, reused when present) a results folder per dimension under --root:
`proteins/` (N records in --samples samples, one distinct sequence each) and
`embeddings/` (N random float32 vectors in --parts Parquet parts). Then, per
dimension:

1. index build: the first `esmpipe similar` process (builds DIR/.index);
2. queries: --repeats whole `esmpipe similar` processes per dimension, the
   dimensions alternating (A B A B ...), each asking for a different record;
3. optionally (--baseline) the same query as one DuckDB process that scans the
   Parquet with `array_cosine_similarity` (no index), alternating with ours.

Reports medians, min/max, ratios and each process's peak RSS (ru_maxrss of the
child, from os.wait4). Example (the figures in the notes):

    python benchmarks/bench_similar.py --rows 1000000 --dims 320,1280 --repeats 5 \
        --baseline --root /tmp/bench-similar
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ESMPIPE = [sys.executable, "-m", "esmpipe.cli"]


def build_cohort(folder: Path, rows: int, dim: int, parts: int, samples: int, seed: int) -> None:
    """proteins/ and embeddings/ of `rows` records, random unit-free float32 vectors."""
    done = folder / "DONE"
    if done.is_file() and json.loads(done.read_text()) == {"rows": rows, "dim": dim,
                                                          "parts": parts}:
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "proteins").mkdir(parents=True)
    (folder / "embeddings").mkdir()
    rng = np.random.default_rng(seed)
    meta = {b"esmpipe": json.dumps({"stages": ["embed"], "table": "proteins"}).encode()}
    emb_meta = {b"esmpipe": json.dumps({"model": "synthetic", "layer": -1}).encode()}
    per = -(-rows // parts)
    for p in range(parts):
        lo, hi = p * per, min(rows, (p + 1) * per)
        ids = np.arange(lo, hi)
        hashes = [hashlib.sha256(b"%d" % i).hexdigest() for i in ids]
        lengths = rng.integers(50, 800, hi - lo).astype(np.int32)
        proteins = pa.table({
            "sample": pa.array([f"sample_{i % samples:03d}" for i in ids]),
            "protein_id": pa.array([f"p{i}" for i in ids]),
            "seq_hash": pa.array(hashes),
            "length": pa.array(lengths),
            "status": pa.array(["ok"] * (hi - lo)),
        }).replace_schema_metadata(meta)
        pq.write_table(proteins, folder / "proteins" / f"part-{p:05d}.parquet",
                       compression="zstd")
        vectors = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        table = pa.table({"seq_hash": pa.array(hashes), "length": pa.array(lengths),
                          "embedding": embedding}).replace_schema_metadata(emb_meta)
        pq.write_table(table, folder / "embeddings" / f"part-{p:05d}.parquet",
                       compression="zstd", row_group_size=16384)
        print(f"  {folder.name}: part {p + 1}/{parts}", file=sys.stderr, flush=True)
    done.write_text(json.dumps({"rows": rows, "dim": dim, "parts": parts}))


CPU_SECONDS: list[float] = []  # user + sys of each measured process, in order


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `cmd`; its CPU seconds go to CPU_SECONDS. RSS and
    CPU come from `/usr/bin/time`: ru_maxrss of a child forked from this (large) process
    would count our own pages."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "cpu_s=%U+%S maxrss_kb=%M", *cmd], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stderr.splitlines() if x.startswith("cpu_s=")][-1]
    cpu, kb = (field.split("=")[1] for field in line.split())
    CPU_SECONDS.append(sum(float(x) for x in cpu.split("+")))
    return wall, int(kb) / 1024


def duckdb_baseline(folder: Path, protein_id: str, dim: int, k: int) -> list[str]:
    script = f"""
import duckdb
con = duckdb.connect()
emb = "read_parquet('{folder}/embeddings/**/*.parquet')"
h = con.sql("SELECT seq_hash FROM read_parquet('{folder}/proteins/**/*.parquet') "
            "WHERE protein_id = '{protein_id}'").fetchall()[0][0]
q = con.sql(f"SELECT embedding FROM {{emb}} WHERE seq_hash = '{{h}}'").fetchall()[0][0]
cos = "array_cosine_similarity(embedding::FLOAT[{dim}], $q::FLOAT[{dim}])"
rows = con.sql(f"SELECT seq_hash, {{cos}} AS s FROM {{emb}} ORDER BY s DESC LIMIT {k}",
               params={{"q": list(q)}}).fetchall()
print(rows[0])
"""
    return [sys.executable, "-c", script]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", default="320,1280")
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--baseline", action="store_true",
                        help="also time a DuckDB array_cosine_similarity scan (no index)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-similar"))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep-index", action="store_true",
                        help="reuse an existing index (the first query then builds nothing)")
    args = parser.parse_args()

    dims = [int(d) for d in args.dims.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    folders = {}
    for dim in dims:
        folders[dim] = args.root / f"n{args.rows}-d{dim}"
        print(f"cohort {folders[dim]}", file=sys.stderr, flush=True)
        build_cohort(folders[dim], args.rows, dim, args.parts, args.samples, seed=dim)

    def similar_cmd(dim: int, i: int) -> list[str]:
        protein_id = f"p{(i * 7919 + 13) % args.rows}"
        return [*ESMPIPE, "similar", "--results", str(folders[dim]), "--query", protein_id,
                "-k", str(args.k), "--format", "tsv"]

    report: dict = {"rows": args.rows, "parts": args.parts, "k": args.k,
                    "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "dims": {}}
    for dim in dims:
        if not args.keep_index:
            shutil.rmtree(folders[dim] / ".index", ignore_errors=True)
        wall, rss = measure(similar_cmd(dim, 0), env)
        index_bytes = sum(p.stat().st_size for p in (folders[dim] / ".index").rglob("*"))
        report["dims"][dim] = {"index_build_s": round(wall, 2), "index_build_rss_mib": round(rss),
                               "index_gib": round(index_bytes / 2**30, 2),
                               "query_s": [], "query_rss_mib": [], "duckdb_s": [],
                               "duckdb_rss_mib": []}
        print(f"d={dim}: first query with index build {wall:.1f} s, {rss:.0f} MiB",
              file=sys.stderr, flush=True)

    for i in range(1, args.repeats + 1):
        for dim in dims:  # A B A B: dimensions (and the baseline) alternate
            entry = report["dims"][dim]
            wall, rss = measure(similar_cmd(dim, i), env)
            entry.setdefault("query_cpu_s", []).append(CPU_SECONDS[-1])
            entry["query_s"].append(wall)
            entry["query_rss_mib"].append(rss)
            line = f"d={dim} run {i}: esmpipe similar {wall:.2f} s {rss:.0f} MiB"
            if args.baseline:
                wall_b, rss_b = measure(duckdb_baseline(folders[dim], f"p{i}", dim, args.k), env)
                entry["duckdb_s"].append(wall_b)
                entry["duckdb_rss_mib"].append(rss_b)
                line += f"; duckdb scan {wall_b:.2f} s {rss_b:.0f} MiB"
            print(line, file=sys.stderr, flush=True)

    for entry in report["dims"].values():
        entry["query"] = summary(entry.pop("query_s"))
        entry["query_cpu"] = summary(entry.pop("query_cpu_s"))
        entry["query_peak_rss_mib"] = round(max(entry.pop("query_rss_mib")))
        duck = entry.pop("duckdb_s")
        rss_b = entry.pop("duckdb_rss_mib")
        if duck:
            entry["duckdb"] = summary(duck)
            entry["duckdb_peak_rss_mib"] = round(max(rss_b))
            entry["duckdb_over_esmpipe"] = round(entry["duckdb"]["median"] /
                                                 entry["query"]["median"], 1)
    report["load_after"] = os.getloadavg()[0]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
