"""Planning and gathering a synthetic cohort: seconds and peak memory per step.

    python benchmarks/bench_cohort.py [--records 1000000 5000000 20000000] [--work DIR]
        [--stages embed fold] [--code DIR] [--again] [--plan-only] [--estimate]

A cohort of N records in samples of `--per-sample` records; half the records are
drawn from a shared pool (each shared sequence in about four samples), half are
unique; lengths uniform in [30, 500). Each step runs as a whole `esmpipe`
process, timed with its own peak resident memory (`os.wait4`):

- plan embed / fold: esmpipe shard (cold cache: everything is planned)
- gather embeddings / structures: the stage tables from fake cache parts (embeddings
  of `--dim` floats; structures with short fake per-residue and PDB columns)
- gather proteins: one row per record with both stages' statuses

- gather proteins again (`--again`): the same gather with nothing new (files reused);
  both proteins gathers pass `--reuse-dir` as the workflow does

The fake cache parts are written between steps and not timed. `--code DIR` runs the
steps with another checkout's package (DIR first on sys.path), e.g. main for before-figures;
`--no-list` passes ingest tables on the command line (for code without
`--ingest-list`). The cohort is generated once per size under `--work` and reused.

Before it starts, the script prints the disk it needs (a run takes about 500 bytes a
record with both stages, removed after each size unless `--keep`; a cohort, kept, 200:
20M records need ~10 GB plus ~4 GB for the cohort if it is not there yet) and a rough
time, and stops if the disk lacks room (`--estimate` prints and exits). Load average is printed per
size: CPU seconds are what compare across a loaded machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

AA = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


# Measured on this cohort (5M records, both stages): bytes on disk per record of a run
# (two plans with the sequences, results, fake parts; removed after each size), of the
# generated cohort (kept), and CPU seconds per record of all steps.
DISK_PER_RECORD = 500
COHORT_PER_RECORD = 200
CPU_PER_RECORD = 30e-6


class Figure(NamedTuple):
    seconds: float
    cpu: float
    peak_gb: float


def estimate(records: list[int], work: Path, stages: list[str]) -> tuple[int, float]:
    """(bytes of disk the largest size needs at once, rough CPU seconds of all sizes)."""
    share = len(stages) / 2
    cohorts = sum(n * COHORT_PER_RECORD for n in set(records)
                  if not (work / f"cohort-{n}" / "done.json").is_file())
    run = max(n * DISK_PER_RECORD * share for n in records)
    return int(cohorts + run), sum(records) * CPU_PER_RECORD * share


def make_pool(n: int, rng: np.random.Generator) -> tuple[pa.LargeStringArray, pa.Array]:
    """n random protein sequences (as one large_string array) and their lengths."""
    lengths = rng.integers(30, 500, size=n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # One byte a residue, drawn in pieces (20M records hold 3.3 billion residues).
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    step = 1 << 27
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        piece[:] = AA[rng.integers(0, len(AA), size=len(piece), dtype=np.uint8)]
    data[offsets[:-1]] = ord("M")
    seqs = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    return seqs, pa.array(lengths.astype(np.int32))


def generate(folder: Path, records: int, per_sample: int, seed: int = 1) -> list[Path]:
    """Write the cohort's ingest tables (PROTEINS_SCHEMA) under folder; returns their paths."""
    done = folder / "done.json"
    if done.is_file():
        return [Path(p) for p in json.loads(done.read_text())]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_unique = records // 2
    n_shared = max(1, (records - n_unique) // 4)
    seqs, lengths = make_pool(n_unique + n_shared, rng)
    # Hashed a million at a time: Python strings of 12M sequences would take ~4 GB.
    step = 1_000_000
    hashes = pa.concat_arrays([
        pa.array([hashlib.sha256(s.encode()).hexdigest()
                  for s in seqs.slice(i, step).to_numpy(zero_copy_only=False)])
        for i in range(0, len(seqs), step)])
    # Record i: unique sequence i (first half), else a random shared one.
    index = np.concatenate([np.arange(n_unique),
                            n_unique + rng.integers(0, n_shared, size=records - n_unique)])
    rng.shuffle(index)
    paths = []
    for k, start in enumerate(range(0, records, per_sample)):
        take = pa.array(index[start:start + per_sample])
        n = len(take)
        sample = f"S{k:05d}"
        table = pa.table({
            "sample": pa.array([sample] * n),
            "protein_id": pa.array([f"{sample}_{i}" for i in range(n)]),
            "seq_hash": hashes.take(take),
            "sequence": seqs.take(take),
            "length": lengths.take(take),
            "status": pa.array(["ok"] * n),
            "contig": pa.nulls(n, pa.string()),
            "start": pa.nulls(n, pa.int64()),
            "end": pa.nulls(n, pa.int64()),
            "strand": pa.nulls(n, pa.int8()),
            "partial": pa.nulls(n, pa.string()),
        })
        path = folder / f"{sample}.parquet"
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    done.write_text(json.dumps([str(p) for p in paths]))
    return paths


def fake_parts(plan: Path, cache: Path, stage: str, dim: int) -> None:
    """What `esmpipe embed|fold` would write for every shard of the plan (fake values)."""
    cache.mkdir(parents=True, exist_ok=True)
    for shard in sorted((plan / "shards").glob("*.parquet")):
        t = pq.read_table(shard, columns=["seq_hash", "length"])
        n = t.num_rows
        cols = {"seq_hash": t["seq_hash"], "length": t["length"],
                "status": pa.array(["ok"] * n)}
        if stage == "embed":
            values = np.tile(np.arange(dim, dtype=np.float32), n)
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(values), dim)
        else:
            cols["mean_plddt"] = pa.array(np.full(n, 80.0, np.float32))
            cols["ptm"] = pa.array(np.full(n, 0.8, np.float32))
            flat = pa.array(np.full(4 * n, 80.0, np.float32))
            cols["plddt"] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, 4 * n + 1, 4, dtype=np.int32)), flat)
            cols["max_pae"] = pa.array(np.full(n, 30.0, np.float32))
            cols["mean_pae"] = pa.array(np.full(n, 10.0, np.float32))
            cols["pdb"] = pa.array(["ATOM\nEND\n"] * n, pa.large_string())
        meta = {"model": f"fake-{stage}", "revision": "r1", "dtype": "float32",
                "output_version": 1, "max_length": 100000}
        table = pa.table(cols).replace_schema_metadata({b"esmpipe": json.dumps(meta)})
        pq.write_table(table, cache / shard.name, compression="zstd")


# The step's own peak: VmHWM of its address space, written at exit. NOTE: not the
# ru_maxrss of os.wait4, which Linux carries over from the forking process (this one,
# gigabytes after generating a 20M cohort) into the child across exec.
LAUNCHER = (
    "import atexit, os, re, sys; sys.path.insert(0, {code!r})\n"
    "def _peak():\n"
    "    text = open('/proc/self/status').read()\n"
    "    with open(os.environ['BENCH_PEAK_FILE'], 'w') as f:\n"
    "        f.write(re.search(r'VmHWM:\\s+(\\d+)', text).group(1))\n"
    "atexit.register(_peak)\n"
    "from esmpipe.cli import main; sys.exit(main())"
)


def run_step(name: str, argv: list[str], env: dict, log: Path) -> Figure:
    """Run one esmpipe process; returns (seconds, CPU seconds, peak RSS in GB)."""
    peak_file = log.with_name("peak.txt")
    peak_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv[3:15])} ...\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env={**env, "BENCH_PEAK_FILE": str(peak_file)},
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed; see {log}")
    peak_kb = int(peak_file.read_text()) if peak_file.is_file() else usage.ru_maxrss
    return Figure(seconds, usage.ru_utime + usage.ru_stime, peak_kb / 1024 / 1024)


def bench(records: int, args: argparse.Namespace) -> dict[str, Figure]:
    base = Path(args.work)
    cohort = base / f"cohort-{records}"
    paths = generate(cohort, records, args.per_sample)
    listing = cohort / "ingest.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    run_dir = base / f"run-{records}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = dict(os.environ)
    # Not PYTHONPATH: `python -c` puts the working directory (this checkout) first.
    code = str(Path(args.code).resolve()) if args.code else str(Path.cwd())
    esmpipe = [sys.executable, "-c", LAUNCHER.format(code=code)]
    inputs = ([*["--ingest"], *map(str, paths)] if args.no_list
              else ["--ingest-list", str(listing)])
    log = run_dir / "bench.log"
    figures: dict[str, Figure] = {}
    stages = {"embed": ("embeddings", args.embed_shard_size, 1),
              "fold": ("structures", args.fold_shard_size, 3)}
    for stage, (table, size, exponent) in stages.items():
        if stage not in args.stages:
            continue
        plan, cache = run_dir / "plan" / stage, run_dir / "cache" / stage
        figures[f"plan {stage}"] = run_step(
            f"plan {stage}",
            [*esmpipe, "shard", "--stage", stage, *inputs, "--cache-dir", str(cache),
             "--output-dir", str(plan), "--settings", json.dumps({"model": stage}),
             "--shard-size", str(size), "--cost-exponent", str(exponent)], env, log)
        if args.plan_only:
            continue
        fake_parts(plan, cache, stage, args.dim)
        figures[f"gather {table}"] = run_step(
            f"gather {table}",
            [*esmpipe, "gather", "--table", table, "--plan", str(plan),
             "--output", str(run_dir / "results" / table),
             "--status-output", str(run_dir / "status" / f"{stage}.parquet")], env, log)
    if args.plan_only:
        if not args.keep:
            shutil.rmtree(run_dir / "plan", ignore_errors=True)
        return figures
    status = [a for stage in args.stages
              for a in ("--status", f"{stage}={run_dir / 'status' / f'{stage}.parquet'}")]
    proteins = [*esmpipe, "gather", "--table", "proteins", *inputs, *status,
                "--output", str(run_dir / "results" / "proteins"),
                # As the workflow: links to the last table are kept there.
                "--reuse-dir", str(run_dir / "gathered" / "proteins")]
    figures["gather proteins"] = run_step("gather proteins", proteins, env, log)
    if args.again:
        figures["gather proteins again"] = run_step("gather proteins again", proteins, env, log)
    if not args.keep:
        for folder in ("cache", "results", "plan", "gathered"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+",
                        default=[1_000_000, 5_000_000, 20_000_000],
                        help="cohort sizes to measure, in records")
    parser.add_argument("--per-sample", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=32, help="fake embedding width")
    parser.add_argument("--work", default="benchmarks/out/cohort")
    parser.add_argument("--code", help="run the steps with the package of this checkout")
    parser.add_argument("--no-list", action="store_true",
                        help="pass ingest tables with --ingest (code without --ingest-list)")
    parser.add_argument("--keep", action="store_true", help="keep caches and results")
    parser.add_argument("--stages", nargs="+", default=["embed", "fold"],
                        choices=("embed", "fold"))
    parser.add_argument("--embed-shard-size", type=float, default=20000,
                        help="as config/config.yaml")
    parser.add_argument("--fold-shard-size", type=float, default=50000,
                        help="as config/config.yaml (about 400 fold shards per million "
                             "records of this cohort; 2000, the old default, made 10,000)")
    parser.add_argument("--again", action="store_true",
                        help="also time gather proteins a second time (nothing new)")
    parser.add_argument("--plan-only", action="store_true",
                        help="time only the plan steps (esmpipe shard), no gathers")
    parser.add_argument("--estimate", action="store_true",
                        help="print the disk and time estimate and exit")
    parser.add_argument("--force", action="store_true", help="run even if the disk seems short")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    need, cpu = estimate(args.records, work, args.stages)
    free = shutil.disk_usage(work).free
    print(f"# needs ~{need / 1e9:.1f} GB of disk at once ({free / 1e9:.1f} GB free under "
          f"{work}); ~{cpu / 60:.0f} CPU-minutes of steps, plus generating the cohorts "
          "(about a minute per million records on a loaded machine) and the fake parts", flush=True)
    if args.estimate:
        return
    if need > free and not args.force:
        sys.exit(f"not enough disk under {work} (--force to run anyway)")
    print(f"{'records':>10}  {'step':<24}{'seconds':>9}{'CPU s':>9}{'peak GB':>9}")
    for records in args.records:
        print(f"# {records} records, load average before: {os.getloadavg()}", flush=True)
        figures = bench(records, args)
        for step, f in figures.items():
            print(f"{records:>10}  {step:<24}{f.seconds:>9.1f}{f.cpu:>9.1f}{f.peak_gb:>9.2f}",
                  flush=True)
        first = next(f for step, f in figures.items() if step.startswith("plan "))
        last = figures.get("gather proteins")
        if last is not None:
            print(f"{records:>10}  {'plan+gather proteins':<24}"
                  f"{first.seconds + last.seconds:>9.1f}{first.cpu + last.cpu:>9.1f}"
                  f"{max(first.peak_gb, last.peak_gb):>9.2f}", flush=True)
        print(f"# load average after: {os.getloadavg()}", flush=True)
        with open(work / "figures.jsonl", "a") as out:
            for step, f in figures.items():
                out.write(json.dumps({"records": records, "step": step, **f._asdict(),
                                      "load": os.getloadavg()[0],
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


if __name__ == "__main__":
    main()
