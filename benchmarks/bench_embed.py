"""Whole-process comparison of `esmpipe embed` (its defaults) with transformers used with care.

    python benchmarks/bench_embed.py --presets esm2_t6_8M,esm2_t12_35M,esm2_t30_150M --rounds 3
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
model load, tokenising, forward, writing), peak RSS (ru_maxrss of that
process), and the ratio transformers / esmpipe (> 1: esmpipe is faster); and the
largest difference between esmpipe's and transformers' embeddings.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("esmpipe", "hf-sorted", "hf-batch8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="esm2_t6_8M,esm2_t12_35M,esm2_t30_150M")
    parser.add_argument("--proteins", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender")
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


def run_process(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=ROOT)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024  # Linux: KiB


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


def bench_preset(preset: str, args: argparse.Namespace, base: Path) -> dict:
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
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    rss: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_ in range(args.rounds):
        names = CONTENDERS if round_ % 2 == 0 else tuple(reversed(CONTENDERS))
        for name in names:
            seconds, peak = run_process(runs[name])
            times[name].append(seconds)
            rss[name].append(peak)
            print(f"  {preset} round {round_ + 1} {name:10s} {seconds:8.2f} s  "
                  f"{peak:8.0f} MiB", flush=True)  # fmt: skip
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "preset": preset,
        "proteins": len(lengths),
        "residues": sum(lengths),
        "rounds": args.rounds,
        "times_s": times,
        "peak_rss_mib": rss,
        "median_s": median,
        "median_peak_rss_mib": {name: statistics.median(r) for name, r in rss.items()},
        "ratio_hf_sorted_over_esmpipe": median["hf-sorted"] / median["esmpipe"],
        "ratio_hf_batch8_over_esmpipe": median["hf-batch8"] / median["esmpipe"],
        "max_abs_diff_vs_hf": agreement(out),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    if args.worker:
        return worker(args)
    presets = ["tiny-esm2"] if args.quick else args.presets.split(",")
    if args.quick:
        args.proteins, args.rounds = 20, 1
    with tempfile.TemporaryDirectory() as tmp:
        base = args.workdir or Path(tmp)
        reports = []
        for preset in presets:
            report = bench_preset(preset, args, base)
            reports.append(report)
            med, peak = report["median_s"], report["median_peak_rss_mib"]
            print(f"{preset}: {report['proteins']} proteins, {report['residues']:,} residues, "
                  f"{report['rounds']} rounds (median s / peak RSS MiB)")  # fmt: skip
            for name in CONTENDERS:
                print(f"  {name:10s} {med[name]:8.2f} s  {peak[name]:8.0f} MiB")
            print(f"  ratio hf-sorted/esmpipe {report['ratio_hf_sorted_over_esmpipe']:.2f}x, "
                  f"hf-batch8/esmpipe {report['ratio_hf_batch8_over_esmpipe']:.2f}x, "
                  f"max |diff| {report['max_abs_diff_vs_hf']:.1e}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
