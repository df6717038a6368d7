"""Throughput of our EsmForProteinFolding against the `transformers` port, same random weights.

Both models share one set of random weights (the reference's, copied into ours),
fold the same random sequences, and are timed alternately. Reported per
(length, chunk size): seconds per protein for each, their ratio (ours/reference,
below 1 is faster), the largest coordinate difference between the two, and on
CUDA the peak memory above the weights.

    # tiny model on the CPU (a few seconds)
    python benchmarks/bench_esmfold.py --preset tiny --device cpu --lengths 32 64

    # the published esmfold_v1 dimensions on a GPU, fp16 stem, with and without chunking
    python benchmarks/bench_esmfold.py --preset esmfold_v1 --device cuda \
        --lengths 128 256 512 --chunk-sizes none 64 --fp16-esm

`transformers` is needed here (it is the reference); it is never a runtime dependency.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esmpipe.models import EsmConfig, EsmForProteinFolding  # noqa: E402
from esmpipe.models.config import ESM2_VOCAB  # noqa: E402

_STEM = {
    "model_type": "esm", "vocab_size": 33, "pad_token_id": 1, "mask_token_id": 32,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 1026, "layer_norm_eps": 1e-5,
    "position_embedding_type": "rotary", "emb_layer_norm_before": False,
    "token_dropout": True, "is_folding_model": True, "vocab_list": list(ESM2_VOCAB),
}  # fmt: skip

PRESETS = {
    # Small enough for a shared CPU: 2-layer stem, 4 trunk blocks.
    "tiny": {
        **_STEM, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 256,
        "esmfold_config": {
            "lddt_head_hid_dim": 32,
            "trunk": {
                "num_blocks": 4, "sequence_state_dim": 64, "pairwise_state_dim": 32,
                "sequence_head_width": 16, "pairwise_head_width": 16, "position_bins": 32,
                "max_recycles": 4, "chunk_size": None,
                "structure_module": {
                    "sequence_dim": 64, "pairwise_dim": 32, "ipa_dim": 8, "resnet_dim": 32,
                    "num_heads_ipa": 4, "num_qk_points": 4, "num_v_points": 4, "num_blocks": 4,
                },
            },
        },
    },
    # facebook/esmfold_v1: ESM-2 t36 3B stem, 48-block trunk, 8 structure-module blocks.
    "esmfold_v1": {
        **_STEM, "hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 40,
        "intermediate_size": 10240,
        "esmfold_config": {
            "esm_type": "esm2_3B", "lddt_head_hid_dim": 128,
            "trunk": {
                "num_blocks": 48, "sequence_state_dim": 1024, "pairwise_state_dim": 128,
                "sequence_head_width": 32, "pairwise_head_width": 32, "position_bins": 32,
                "max_recycles": 4, "chunk_size": None,
            },
        },
    },
}  # fmt: skip

AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"


def build_models(
    config: dict, device: torch.device
) -> tuple[torch.nn.Module, EsmForProteinFolding]:
    """The reference with seeded random weights, and ours sharing those weights."""
    import transformers

    torch.manual_seed(0)
    with device:
        reference = transformers.EsmForProteinFolding(transformers.EsmConfig(**config))
    reference.eval()
    with torch.device("meta"):
        ours = EsmForProteinFolding(EsmConfig.from_dict(copy.deepcopy(config)))
    # Same device and dtype: the tensors are shared, not copied.
    ours.load_checkpoint_state_dict(reference.state_dict(), device=device, source="reference")
    ours.eval()
    return reference, ours


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fold(model, ids: torch.Tensor, num_recycles: int | None, repeats: int, device):
    """(seconds per call, peak bytes above the start on CUDA or None, output)."""
    with torch.no_grad():
        out = model(ids, num_recycles=num_recycles)  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        start = time.perf_counter()
        for _ in range(repeats):
            out = model(ids, num_recycles=num_recycles)
        sync(device)
        elapsed = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) - start_bytes if device.type == "cuda" else None
    return elapsed, peak, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--chunk-sizes", nargs="+", default=["none"],
                        help="trunk chunk sizes to try; 'none' for unchunked")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1, help="proteins per forward")
    parser.add_argument("--num-recycles", type=int, default=None,
                        help="default: the config's max_recycles passes")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fp16-esm", action="store_true", help="run the stem in fp16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = copy.deepcopy(PRESETS[args.preset])
    config["esmfold_config"]["fp16_esm"] = args.fp16_esm
    reference, ours = build_models(config, device)
    chunk_sizes = [None if c.lower() == "none" else int(c) for c in args.chunk_sizes]

    rng = random.Random(0)
    rows = []
    header = (f"{'L':>5} {'chunk':>6} {'ours s/prot':>12} {'ref s/prot':>11} {'ratio':>6} "
              f"{'max|dpos|':>10} {'ours MiB':>9} {'ref MiB':>8}")  # fmt: skip
    print(f"# preset={args.preset} device={device} batch={args.batch} "
          f"fp16_esm={args.fp16_esm} num_recycles={args.num_recycles} repeats={args.repeats} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")  # fmt: skip
    print(header)
    for length in args.lengths:
        ids = torch.tensor(
            [[AMINO_ACIDS.index(rng.choice(AMINO_ACIDS)) for _ in range(length)]
             for _ in range(args.batch)],
            device=device,
        )  # fmt: skip
        for chunk in chunk_sizes:
            reference.trunk.set_chunk_size(chunk)
            ours.set_chunk_size(chunk)
            run = (ids, args.num_recycles, args.repeats, device)
            t_ref, m_ref, out_ref = time_fold(reference, *run)
            t_ours, m_ours, out = time_fold(ours, *run)
            diff = (out.positions.float() - out_ref["positions"].float()).abs().max().item()
            row = {
                "length": length, "chunk_size": chunk, "batch": args.batch,
                "ours_s_per_protein": t_ours / args.batch,
                "reference_s_per_protein": t_ref / args.batch,
                "ratio": t_ours / t_ref, "max_abs_position_diff": diff,
                "ours_peak_mib": None if m_ours is None else m_ours / 2**20,
                "reference_peak_mib": None if m_ref is None else m_ref / 2**20,
            }  # fmt: skip
            rows.append(row)
            mib = ("-" if m_ours is None else f"{m_ours / 2**20:.0f}",
                   "-" if m_ref is None else f"{m_ref / 2**20:.0f}")  # fmt: skip
            print(f"{length:>5} {str(chunk):>6} {row['ours_s_per_protein']:>12.4f} "
                  f"{row['reference_s_per_protein']:>11.4f} {row['ratio']:>6.2f} "
                  f"{diff:>10.2e} {mib[0]:>9} {mib[1]:>8}", flush=True)  # fmt: skip
            del out, out_ref

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.json.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                      handle, indent=2)  # fmt: skip
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
