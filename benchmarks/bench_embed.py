"""Whole-process comparison of `esmpipe embed` (its defaults) with transformers used with care.

    python benchmarks/bench_embed.py --presets esm2_t6_8M,esm2_t12_35M,esm2_t30_150M --rounds 3
    python benchmarks/bench_embed.py --presets esm2_t30_150M --rounds 1   # ~20 min quiet
    python benchmarks/bench_embed.py --rounds 3 --rounds-for esm2_t30_150M=1 --json out.json
    python benchmarks/bench_embed.py --quick          # smoke run: tiny model, 20 proteins

For each preset a random-weight checkpoint (`esmpipe init-model`) and one FASTA
of proteins whose lengths are drawn like real ones (log-normal, median 300,
kept within 30-1,000 residues) are made; then, in alternating order (A B C,
C B A, ...), whole processes run:

- `esmpipe`: `esmpipe embed --model M --input F --output O --device cpu`, no tuning flags;
- `hf-sorted`: transformers `EsmModel` (SDPA) fed length-sorted batches of at most
  4,096 padded tokens, mean over residues, Parquet out;
- `hf-batch8`: the same fed batches of 8 in input order.

Reported per contender: the median wall time of the whole process (imports,
model load, tokenising, forward, writing), its CPU seconds (user + system,
from wait4: the steadier figure on a shared machine), peak RSS (ru_maxrss of
that process), and the ratios transformers / esmpipe (> 1: esmpipe is faster);
and the largest difference between esmpipe's and transformers' embeddings.
Each run prints the 1-minute load average when it started: a quiet machine shows
about 0. One round of the 150M preset (three whole processes on the 300 proteins)
takes about 20 minutes on the 2-core CPU of issue 7; `--rounds-for` gives a preset
its own number of rounds, and `--json` is rewritten after every run, so a stopped
benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("esmpipe", "hf-sorted", "hf-batch8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="esm2_t6_8M,esm2_t12_35M,esm2_t30_150M")
    parser.add_argument("--proteins", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender")
    parser.add_argument("--rounds-for", type=_rounds_for, default={}, metavar="PRESET=N,...",
                        help="rounds for these presets (default: --rounds)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny-esm2, 20 proteins, 1 round")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    # Worker mode (internal): one transformers run.
    parser.add_argument("--worker", choices=("sorted", "batch8"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _rounds_for(text: str) -> dict[str, int]:
    rounds: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        preset, sep, value = part.partition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: expected PRESET=N with N >= 1")
        rounds[preset] = int(value)
    return rounds


def protein_lengths(n: int, seed: int, low: int = 30, high: int = 1000) -> list[int]:
    """Lengths like real proteins: log-normal (median 300, sigma 0.6), within [low, high]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while len(lengths) < n:
        value = int(rng.lognormal(np.log(300), 0.6))
        if low <= value <= high:
            lengths.append(value)
    return lengths


def write_fasta(path: Path, lengths: list[int], seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    residues = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    with open(path, "w") as handle:
        for i, n in enumerate(lengths):
            handle.write(f">p{i}\n{''.join(rng.choice(residues, n))}\n")


def read_fasta(path: str) -> list[str]:
    sequences: list[str] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            sequences.append("")
        elif line.strip():
            sequences[-1] += line.strip()
    return sequences


def worker(args: argparse.Namespace) -> int:
    """One transformers run, as a careful user writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    sequences = read_fasta(args.input)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.EsmModel.from_pretrained(
        args.model, add_pooling_layer=False, attn_implementation="sdpa"
    ).eval()
    order = list(range(len(sequences)))
    batches: list[list[int]] = []
    if args.worker == "sorted":
        order.sort(key=lambda i: -len(sequences[i]))
        current: list[int] = []
        for i in order:
            if current and (len(current) + 1) * (len(sequences[current[0]]) + 2) > 4096:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
    else:
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    vectors: dict[int, list[float]] = {}
    with torch.inference_mode():
        for batch in batches:
            encoded = tokenizer([sequences[i] for i in batch], padding=True, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].clone()
            mask[:, 0] = 0
            mask[torch.arange(len(batch)), encoded["attention_mask"].sum(1) - 1] = 0
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            for i, vector in zip(batch, pooled, strict=True):
                vectors[i] = vector.tolist()
    pq.write_table(pa.table({"sequence": sequences,
                             "embedding": [vectors[i] for i in range(len(sequences))]}),
                   args.output)  # fmt: skip
    return 0


def run_process(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=ROOT)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


def commands(model: Path, fasta: Path, out: Path) -> dict[str, list[str]]:
    esmpipe = [sys.executable, "-c", "import sys; from esmpipe.cli import main; sys.exit(main())",
               "embed", "--model", str(model), "--input", str(fasta), "--device", "cpu",
               "--output", str(out / "esmpipe.parquet")]  # fmt: skip
    hf = [sys.executable, str(Path(__file__).resolve()), "--model", str(model), "--input",
          str(fasta)]  # fmt: skip
    return {
        "esmpipe": esmpipe,
        "hf-sorted": [*hf, "--worker", "sorted", "--output", str(out / "hf-sorted.parquet")],
        "hf-batch8": [*hf, "--worker", "batch8", "--output", str(out / "hf-batch8.parquet")],
    }


def agreement(out: Path) -> float:
    """Largest |esmpipe - transformers| over every embedding value."""
    import numpy as np
    import pyarrow.parquet as pq

    from esmpipe.io.sequences import seq_hash

    ours = pq.read_table(out / "esmpipe.parquet").to_pydict()
    by_hash = dict(zip(ours["seq_hash"], ours["embedding"], strict=True))
    theirs = pq.read_table(out / "hf-sorted.parquet").to_pydict()
    worst = 0.0
    for sequence, vector in zip(theirs["sequence"], theirs["embedding"], strict=True):
        mine = np.asarray(by_hash[seq_hash(sequence)])
        worst = max(worst, float(np.abs(mine - np.asarray(vector)).max()))
    return worst


def bench_preset(
    preset: str, args: argparse.Namespace, base: Path, on_run: Callable[[dict], None] | None = None
) -> dict:
    folder = base / preset
    model, out = folder / "model", folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; from esmpipe.cli import main; "
                        "sys.exit(main())", "init-model", "--preset", preset, "--output",
                        str(model)], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    fasta = folder / "proteins.fa"
    lengths = protein_lengths(args.proteins, args.seed)
    write_fasta(fasta, lengths, args.seed)
    runs = commands(model, fasta, out)
    rounds = args.rounds_for.get(preset, args.rounds)
    report: dict = {"preset": preset, "proteins": len(lengths), "residues": sum(lengths),
                    "rounds": rounds, "times_s": {name: [] for name in CONTENDERS},
                    "cpu_s": {name: [] for name in CONTENDERS},
                    "peak_rss_mib": {name: [] for name in CONTENDERS},
                    "load_1min": {name: [] for name in CONTENDERS}}  # fmt: skip
    for round_ in range(rounds):
        names = CONTENDERS if round_ % 2 == 0 else tuple(reversed(CONTENDERS))
        for name in names:
            load = os.getloadavg()[0]
            seconds, cpu, peak = run_process(runs[name])
            for key, value in (("times_s", seconds), ("cpu_s", cpu), ("peak_rss_mib", peak),
                               ("load_1min", load)):  # fmt: skip
                report[key][name].append(value)
            print(f"  {preset} round {round_ + 1} {name:10s} {seconds:8.2f} s  {cpu:8.2f} cpu-s  "
                  f"{peak:8.0f} MiB  (load {load:.1f})", flush=True)  # fmt: skip
            if on_run is not None:
                on_run(report)
    median = {name: statistics.median(t) for name, t in report["times_s"].items()}
    cpu = {name: statistics.median(t) for name, t in report["cpu_s"].items()}
    report.update({
        "median_s": median,
        "median_cpu_s": cpu,
        "median_peak_rss_mib": {name: statistics.median(r)
                                for name, r in report["peak_rss_mib"].items()},
        "ratio_hf_sorted_over_esmpipe": median["hf-sorted"] / median["esmpipe"],
        "ratio_hf_batch8_over_esmpipe": median["hf-batch8"] / median["esmpipe"],
        "cpu_ratio_hf_sorted_over_esmpipe": cpu["hf-sorted"] / cpu["esmpipe"],
        "cpu_ratio_hf_batch8_over_esmpipe": cpu["hf-batch8"] / cpu["esmpipe"],
        "max_abs_diff_vs_hf": agreement(out),
    })  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    if args.worker:
        return worker(args)
    presets = ["tiny-esm2"] if args.quick else args.presets.split(",")
    if args.quick:
        args.proteins, args.rounds = 20, 1
    reports: list[dict] = []

    def save(current: dict | None = None) -> None:
        if args.json:
            done = reports + ([current] if current is not None else [])
            args.json.write_text(json.dumps(done, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        base = args.workdir or Path(tmp)
        for preset in presets:
            report = bench_preset(preset, args, base, on_run=save)
            reports.append(report)
            save()
            med, cpu = report["median_s"], report["median_cpu_s"]
            peak = report["median_peak_rss_mib"]
            print(f"{preset}: {report['proteins']} proteins, {report['residues']:,} residues, "
                  f"{report['rounds']} rounds (median s / cpu-s / peak RSS MiB)")  # fmt: skip
            for name in CONTENDERS:
                print(f"  {name:10s} {med[name]:8.2f} s  {cpu[name]:8.2f} cpu-s  "
                      f"{peak[name]:8.0f} MiB")  # fmt: skip
            print(f"  ratio hf-sorted/esmpipe {report['ratio_hf_sorted_over_esmpipe']:.2f}x "
                  f"(cpu {report['cpu_ratio_hf_sorted_over_esmpipe']:.2f}x), "
                  f"hf-batch8/esmpipe {report['ratio_hf_batch8_over_esmpipe']:.2f}x "
                  f"(cpu {report['cpu_ratio_hf_batch8_over_esmpipe']:.2f}x), "
                  f"max |diff| {report['max_abs_diff_vs_hf']:.1e}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
