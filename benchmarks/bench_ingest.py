"""CPU seconds and peak memory of one `esmpipe ingest` job, code trees A/B.

Each tree given with --tree (a checkout's root, put first on PYTHONPATH; e.g. one
from `git archive <commit> esmpipe | tar -x -C /tmp/before`) ingests the same
files in fresh processes, paired and alternating A B A B: a one-record protein file
(what most of a cohort's jobs are: the per-job cost is the command's start) and one
of --proteins random proteins (throughput). Printed per tree and file: the median
CPU seconds (user + sys of the job, from wait4), wall seconds and peak RSS, and
whether the outputs of the trees are the same bytes.

    python benchmarks/bench_ingest.py --tree before=/tmp/before --tree after=. \\
        --repeats 7 --proteins 500000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AA = "ACDEFGHIKLMNPQRSTVWY"


def make_proteins(path: Path, n: int, seed: int = 0) -> None:
    """n proteins of 50-600 residues, some repeated, some with stops or odd letters."""
    rnd = random.Random(seed)
    with path.open("w") as out:
        for i in range(n):
            seq = "M" + "".join(rnd.choices(AA, k=rnd.randint(49, 599)))
            if i % 97 == 0:
                seq += "*"
            if i % 1009 == 0:
                seq = seq[:20] + "X" + seq[20:].lower()
            name = f"p{i}" if i % 5003 else "p1"  # a few duplicate ids
            out.write(f">{name} protein {i}\n")
            out.writelines(seq[j:j + 60] + "\n" for j in range(0, len(seq), 60))


def ingest(tree: Path, fasta: Path, output: Path) -> dict:
    """One `esmpipe ingest` in a fresh interpreter with `tree` first on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    cmd = [sys.executable, "-m", "esmpipe.cli", "ingest", "--sample", "s", "--type", "protein",
           "--input", str(fasta), "--output", str(output)]  # fmt: skip
    log = output.with_suffix(".log")
    with log.open("w") as err:
        start = time.perf_counter()
        # cwd: not a checkout (python puts the working directory before PYTHONPATH).
        proc = subprocess.Popen(cmd, env=env, cwd=output.parent, stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         f"{log.read_text()[-3000:]}")  # fmt: skip
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall,
            "max_rss_mb": usage.ru_maxrss / 1024,
            "sha256": hashlib.sha256(output.read_bytes()).hexdigest()}  # fmt: skip


def check_tree(tree: Path) -> None:
    """The tree's esmpipe is the one imported (not the installed package)."""
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    found = subprocess.run([sys.executable, "-c", "import esmpipe; print(esmpipe.__file__)"],
                           env=env, cwd=tempfile.gettempdir(), check=True,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: imports esmpipe from {found}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--repeats", type=int, default=7, help="runs of the one-record file")
    parser.add_argument("--large-repeats", type=int, default=3, help="runs of the large file")
    parser.add_argument("--proteins", type=int, default=500_000, help="0: no large file")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree)
    for path in trees.values():
        check_tree(Path(path))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        one = folder / "one.faa"
        one.write_text(">p1\nMKVLAAGIVGLLLAVSA\n")
        files = [("1 record", one, args.repeats)]
        if args.proteins:
            large = folder / "large.faa"
            make_proteins(large, args.proteins)
            files.append((f"{args.proteins} proteins", large, args.large_repeats))
        runs: list[dict] = []
        for label, fasta, repeats in files:
            for r in range(repeats):
                order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                for name, path in order:
                    out = folder / f"{name}.parquet"
                    runs.append({"file": label, "tree": name, "repeat": r,
                                 **ingest(Path(path), fasta, out)})  # fmt: skip
                    out.unlink()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("| file | tree | runs | CPU s (median) | wall s (median) | max RSS MB (median) "
          "| output |")
    for label, _, _ in files:
        digests = {r["sha256"] for r in runs if r["file"] == label}
        same = "same bytes" if len(digests) == 1 else "DIFFERENT"
        for name in trees:
            mine = [r for r in runs if r["file"] == label and r["tree"] == name]
            print(f"| {label} | {name} | {len(mine)} "
                  f"| {statistics.median(r['cpu_s'] for r in mine):.3f} "
                  f"| {statistics.median(r['wall_s'] for r in mine):.3f} "
                  f"| {statistics.median(r['max_rss_mb'] for r in mine):.0f} | {same} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
