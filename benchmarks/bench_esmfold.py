"""`esmpipe fold` with its defaults against `transformers` one protein at a time, whole processes.

The comparison of issue 8, on the CPU: one random checkpoint (ESM-2 8M-shaped
stem, 4 trunk blocks with c_s 256 / c_z 64, 8 structure-module blocks, written
once by `transformers` so that both sides load the same weights), 16 proteins
of 52-300 residues. Each side runs as its own process, alternating A B A B:

- A: `esmpipe fold --model CKPT --input set.fasta --output out.parquet`, defaults;
- B: a `transformers` process that loads the same folder and calls
  `EsmForProteinFolding.infer(sequence)` for one protein at a time.

Printed: wall seconds and CPU seconds (user + system, from wait4) per run, the
medians and their ratios (reference / esmpipe, above 1 means esmpipe is faster),
peak resident memory of each process (ru_maxrss from wait4), and the largest
per-protein differences of pTM and mean pLDDT (CA, 0-100; the reference's value
recomputed from its per-atom pLDDT) between the two (the issue asks for agreement
within 1e-3).

    python benchmarks/bench_esmfold.py --workdir /tmp/bench_esmfold --pairs 2

    # a quick check that everything runs (tiny model, 3 short proteins)
    python benchmarks/bench_esmfold.py --workdir /tmp/bench_tiny --tiny --pairs 1

On a machine shared with other jobs the wall ratio is noise-prone; the CPU-time
ratio is the steadier figure there (both sides use the same torch thread count).

`transformers` is needed here (it is the reference); it is never a runtime dependency.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"

_STEM = {
    "model_type": "esm", "vocab_size": 33, "pad_token_id": 1, "mask_token_id": 32,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 1026, "layer_norm_eps": 1e-5,
    "position_embedding_type": "rotary", "emb_layer_norm_before": False,
    "token_dropout": True, "is_folding_model": True,
}  # fmt: skip

# The issue's checkpoint: ESM-2 t6 8M stem, 4 trunk blocks c_s 256 / c_z 64, 8 SM blocks.
ISSUE_CONFIG = {
    **_STEM, "hidden_size": 320, "num_hidden_layers": 6, "num_attention_heads": 20,
    "intermediate_size": 1280,
    "esmfold_config": {
        "fp16_esm": False, "lddt_head_hid_dim": 128,
        "trunk": {
            "num_blocks": 4, "sequence_state_dim": 256, "pairwise_state_dim": 64,
            "sequence_head_width": 32, "pairwise_head_width": 32, "position_bins": 32,
            "max_recycles": 4, "chunk_size": None,  # as facebook/esmfold_v1's config
        },
    },
}  # fmt: skip

TINY_CONFIG = {
    **_STEM, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64,
    "esmfold_config": {
        "fp16_esm": False, "lddt_head_hid_dim": 16,
        "trunk": {
            "num_blocks": 2, "sequence_state_dim": 64, "pairwise_state_dim": 32,
            "sequence_head_width": 32, "pairwise_head_width": 16, "position_bins": 32,
            "max_recycles": 2, "chunk_size": None,
            "structure_module": {
                "sequence_dim": 64, "pairwise_dim": 32, "ipa_dim": 8, "resnet_dim": 16,
                "num_heads_ipa": 2, "num_qk_points": 2, "num_v_points": 2, "num_blocks": 2,
            },
        },
    },
}  # fmt: skip


def write_checkpoint(folder: Path, config: dict, seed: int = 0) -> None:
    """A random `transformers` ESMFold saved in the Hugging Face layout.

    Every parameter gets small noise on top of the reference's init, so that the
    zero-initialised output layers do not make the trunk an identity.
    """
    import torch
    import transformers

    from esmpipe.models.config import ESM2_VOCAB

    config = copy.deepcopy(config)
    config["vocab_list"] = list(ESM2_VOCAB)
    torch.manual_seed(seed)
    model = transformers.EsmForProteinFolding(transformers.EsmConfig(**config)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)


def write_fasta(path: Path, lengths: list[int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sequences = ["".join(rng.choice(AMINO_ACIDS) for _ in range(n)) for n in lengths]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(sequences)))
    os.replace(tmp, path)
    return sequences


def run_process(command: list[str], log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MiB, CPU seconds) of one whole process; raises if it
    fails."""
    with open(log, "w") as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def reference_worker(model_dir: Path, fasta: Path, out: Path) -> int:
    """B: transformers `infer`, one protein at a time; per-protein pTM and CA mean pLDDT."""
    import torch
    import transformers

    sequences = [line.strip() for line in fasta.read_text().splitlines() if line[:1] != ">"]
    model = transformers.EsmForProteinFolding.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for seq in sequences:
            output = model.infer(seq)
            ca = output["plddt"][0, : len(seq), 1].float() * 100  # atom37 slot 1 is CA
            rows.append({"sequence": seq, "ptm": float(output["ptm"]),
                         "mean_plddt": float(ca.mean())})  # fmt: skip
    out.write_text(json.dumps(rows))
    return 0


def compare(reference_json: Path, ours_parquet: Path) -> tuple[float, float, int]:
    """(max |d pTM|, max |d mean pLDDT|, proteins compared)."""
    import pyarrow.parquet as pq

    from esmpipe.io.sequences import seq_hash

    reference = {seq_hash(r["sequence"]): r for r in json.loads(reference_json.read_text())}
    table = pq.read_table(ours_parquet).to_pylist()
    d_ptm = d_plddt = 0.0
    for row in table:
        ref = reference[row["seq_hash"]]
        d_ptm = max(d_ptm, abs(row["ptm"] - ref["ptm"]))
        d_plddt = max(d_plddt, abs(row["mean_plddt"] - ref["mean_plddt"]))
    if len(table) != len(reference):
        raise RuntimeError(f"esmpipe wrote {len(table)} rows for {len(reference)} proteins")
    return d_ptm, d_plddt, len(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    worker = sub.add_parser("reference-worker")
    worker.add_argument("model", type=Path)
    worker.add_argument("fasta", type=Path)
    worker.add_argument("out", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("bench_esmfold"))
    parser.add_argument("--pairs", type=int, default=1, help="A B rounds (medians reported)")
    parser.add_argument("--tiny", action="store_true", help="tiny model, 3 short proteins")
    parser.add_argument("--order", choices=("AB", "BA"), default="AB")
    args = parser.parse_args(argv)
    if args.mode == "reference-worker":
        return reference_worker(args.model, args.fasta, args.out)

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    config, lengths = (TINY_CONFIG, [12, 20, 30]) if args.tiny else (ISSUE_CONFIG, None)
    if lengths is None:
        rng = random.Random(8)
        lengths = [52, 300] + [rng.randint(52, 300) for _ in range(14)]
    model_dir = work / ("tiny" if args.tiny else "issue8") / "model"
    if not (model_dir / "config.json").exists():
        write_checkpoint(model_dir, config)
    fasta = model_dir.parent / "set.fasta"
    write_fasta(fasta, lengths)

    esmpipe = str(Path(sys.executable).with_name("esmpipe"))
    runs: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    outputs = {"A": model_dir.parent / "esmpipe.parquet", "B": model_dir.parent / "reference.json"}
    commands = {
        "A": [esmpipe, "fold", "--model", str(model_dir), "--input", str(fasta),
              "--output", str(outputs["A"])],
        "B": [sys.executable, __file__, "reference-worker", str(model_dir), str(fasta),
              str(outputs["B"])],
    }  # fmt: skip
    import torch

    print(f"# {len(lengths)} proteins of {min(lengths)}-{max(lengths)} residues, "
          f"{'tiny' if args.tiny else 'issue 8'} checkpoint {model_dir}; "
          f"torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; A = esmpipe fold (defaults), B = transformers infer "
          "one protein at a time", flush=True)  # fmt: skip
    for round_ in range(args.pairs):
        for side in args.order:
            if side == "A":
                outputs["A"].unlink(missing_ok=True)
            log = model_dir.parent / f"{side}{round_}.log"
            wall, rss, cpu = run_process(commands[side], log)
            runs[side].append((wall, rss, cpu))
            print(f"round {round_} {side}: {wall:8.1f} s wall, {cpu:8.1f} s CPU, peak RSS "
                  f"{rss:7.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    d_ptm, d_plddt, n = compare(outputs["B"], outputs["A"])
    median = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
    peak = {k: max(r[1] for r in v) for k, v in runs.items()}
    print(f"median wall: esmpipe {median['A']:.1f} s, transformers {median['B']:.1f} s; "
          f"ratio (transformers / esmpipe) {median['B'] / median['A']:.2f}x")
    print(f"median CPU: esmpipe {cpu['A']:.1f} s, transformers {cpu['B']:.1f} s; "
          f"ratio (transformers / esmpipe) {cpu['B'] / cpu['A']:.2f}x")
    print(f"peak RSS: esmpipe {peak['A']:.0f} MiB, transformers {peak['B']:.0f} MiB")
    ok = d_ptm <= 1e-3 and d_plddt <= 1e-3
    print(f"agreement over {n} proteins: max |d pTM| {d_ptm:.2e}, max |d mean pLDDT| "
          f"{d_plddt:.2e} ({'within' if ok else 'NOT within'} 1e-3)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
