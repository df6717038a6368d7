"""The workflow's own overhead per job, for cohorts of tiny files, before vs after.

A full local run (ingest to tables, embed only, the tiny random model) of a cohort
of N one-record protein files: N ingest jobs, one embed job, the plan and gathers.
The files are tiny, so the time is the workflow's: Snakemake, and for each job the
start of its command. Each workflow given with --workflow (a Snakefile; e.g. one
from `git worktree add /tmp/before <commit>`) runs in its own fresh folder, paired
and alternating A B A B; printed: wall and CPU seconds (Snakemake and all its jobs;
on a shared machine the CPU figure is the steadier one), jobs, both per job, the CPU
seconds per job that are Snakemake's own (all CPU minus the jobs' `cpu_time` in their
benchmark files), the peak
memory of Snakemake and its children (max RSS) and the load average at the end.

    python benchmarks/bench_workflow.py --samples 200 1000 --repeats 1 \\
        --workflow before=/tmp/before/workflow/Snakefile --workflow after=workflow/Snakefile
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AA = "ACDEFGHIKLMNPQRSTVWY"


def make_cohort(folder: Path, samples: int) -> None:
    (folder / "config" / "fasta").mkdir(parents=True)
    rows = ["sample\tpath\ttype"]
    for i in range(samples):
        seq = "M" + "".join(AA[(i * 7 + j * 3) % 20] for j in range(30 + i % 40))
        (folder / "config" / "fasta" / f"s{i:05d}.faa").write_text(f">p{i}\n{seq}\n")
        rows.append(f"s{i:05d}\tfasta/s{i:05d}.faa\tprotein")
    (folder / "config" / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = {
        "samples": "config/samples.tsv",
        "embed": {"model": {"preset": "tiny-esm2"}, "device": "cpu", "dtype": "float32",
                  "max_tokens": 4096, "shard_size": 100000, "threads": 1},
        "fold": False,
    }  # fmt: skip
    (folder / "config" / "bench.yaml").write_text(json.dumps(config))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(snakefile: Path, folder: Path, cores: int, extra: list[str]) -> dict:
    """One full run; CPU seconds are Snakemake's and every job's (all waited-for
    descendants), the steadier figure on a shared machine."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--profile",
           str(REPO / "profiles" / "local"), "--configfile", "config/bench.yaml",
           "--cores", str(cores), *extra, "results/proteins", "results/embeddings"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        sys.exit(f"{snakefile} failed in {folder}:\n{result.stderr[-4000:]}")
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", result.stdout + result.stderr)
    jobs = int(done[-1][1]) if done else 0
    # The jobs' own CPU seconds, from their benchmark files (Snakemake's sampling of
    # each job's processes); the rest is Snakemake's: parsing, DAG, scheduling.
    jobs_cpu = sum(_benchmark_cpu(path) for path in (folder / "logs" / "benchmarks").rglob("*.tsv"))
    return {"wall_s": wall, "cpu_s": cpu, "jobs": jobs, "s_per_job": wall / max(jobs, 1),
            "cpu_per_job": cpu / max(jobs, 1), "smk_cpu_per_job": (cpu - jobs_cpu) / max(jobs, 1),
            "max_rss_mb": max(peak, before) / 1024, "load": os.getloadavg()[0]}  # fmt: skip


def _benchmark_cpu(path: Path) -> float:
    """`cpu_time` of a Snakemake benchmark file (0 when it has none)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or "cpu_time" not in lines[0].split("\t"):
        return 0.0
    column = lines[0].split("\t").index("cpu_time")
    values = [line.split("\t")[column] for line in lines[1:]]
    return sum(float(v) for v in values if v not in ("", "NA", "-"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--repeats", type=int, default=1, help="pairs per cohort size")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--workflow", action="append", metavar="NAME=SNAKEFILE",
                   help="default: after=workflow/Snakefile")  # fmt: skip
    p.add_argument("--snakemake-args", default="",
                   help="more Snakemake options, e.g. '--scheduler-subsample 0'")  # fmt: skip
    args = p.parse_args()
    extra = args.snakemake_args.split()
    workflows = dict(w.split("=", 1) for w in (args.workflow or
                                               [f"after={REPO / 'workflow' / 'Snakefile'}"]))
    workflows = {name: Path(path).resolve() for name, path in workflows.items()}
    print(f"{'samples':>8} {'workflow':>10} {'wall_s':>8} {'cpu_s':>8} {'jobs':>6} {'s/job':>7} "
          f"{'cpu/job':>7} {'smk_cpu/job':>11} {'maxRSS_MB':>9} {'load':>5}",
          flush=True)  # fmt: skip
    for samples in args.samples:
        with tempfile.TemporaryDirectory(prefix="bench_workflow_") as tmp:
            template = Path(tmp) / "template"
            make_cohort(template, samples)
            results: dict[str, list[dict]] = {name: [] for name in workflows}
            for _ in range(args.repeats):
                for name, snakefile in workflows.items():  # A B A B
                    folder = Path(tmp) / name
                    shutil.rmtree(folder, ignore_errors=True)
                    shutil.copytree(template, folder)
                    r = run(snakefile, folder, args.cores, extra)
                    results[name].append(r)
                    print(f"{samples:>8} {name:>10} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
                          f"{r['jobs']:>6} {r['s_per_job']:>7.3f} {r['cpu_per_job']:>7.3f} "
                          f"{r['smk_cpu_per_job']:>11.3f} {r['max_rss_mb']:>9.0f} "
                          f"{r['load']:>5.1f}", flush=True)
            medians = {n: statistics.median(r["s_per_job"] for r in rs)
                       for n, rs in results.items()}  # fmt: skip
            cpu = {n: statistics.median(r["cpu_per_job"] for r in rs) for n, rs in results.items()}
            names = list(workflows)
            line = ", ".join(f"{n} {medians[n]:.3f} s/job ({cpu[n]:.3f} CPU s/job)" for n in names)
            if len(names) == 2:
                a, b = names
                line += (f"; ratio {a}/{b} = {medians[a] / medians[b]:.2f} wall, "
                         f"{cpu[a] / cpu[b]:.2f} CPU")  # fmt: skip
            print(f"# {samples} samples, median: {line}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
