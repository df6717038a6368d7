"""Throughput of esmpipe's EsmModel against transformers' on the same random weights.

    python benchmarks/bench_esm2.py --preset esm2_t12_35M --batch 8 --lengths 100,250,400 \
        --device cpu --repeats 3

A batch of random protein sequences of mixed lengths (padded, with an attention
mask) runs through both models; tokens/s counts real (unpadded) tokens. On CUDA,
--dtype float16/bfloat16 runs both in half precision, each with SDPA attention.
The largest difference of the final hidden states at real tokens is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default="esm2_t12_35M", help="a name from esmpipe.models.presets"
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument(
        "--lengths",
        default="100,250,400",
        help="comma-separated sequence lengths, cycled over the batch",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def make_batch(lengths: list[int], vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """<cls> residues <eos> <pad>... with the ESM-2 vocabulary ids: [B, L] ids and mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), 1, dtype=torch.long)  # <pad> = 1
    for row, n in enumerate(lengths):
        ids[row, 0] = 0  # <cls>
        ids[row, 1 : n + 1] = torch.randint(4, 24, (n,), generator=generator)  # the 20 residues
        ids[row, n + 1] = 2  # <eos>
    return ids, (ids != 1).long()


def time_models(
    models: dict[str, torch.nn.Module],
    ids: torch.Tensor,
    mask: torch.Tensor,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Seconds per forward pass of each model; passes alternate between the models so
    that load from other processes on a shared machine hits both alike."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(input_ids=ids, attention_mask=mask)
        sync()
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                out = model(input_ids=ids, attention_mask=mask)
                sync()
                times[name].append(time.perf_counter() - start)
                outputs[name] = out.last_hidden_state
    return times, outputs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    from esmpipe.models import EsmConfig, EsmModel
    from esmpipe.models.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config_dict = get_preset(args.preset).config_dict()
    lengths = [int(x) for x in args.lengths.split(",")]
    lengths = [lengths[i % len(lengths)] for i in range(args.batch)]
    if max(lengths) + 2 > config_dict["max_position_embeddings"]:
        raise SystemExit(
            f"--lengths: longest is {max(lengths)}, preset allows "
            f"{config_dict['max_position_embeddings'] - 2}"
        )

    torch.manual_seed(args.seed)
    ref_config = transformers.EsmConfig(**EsmConfig.from_dict(config_dict).to_dict())
    ref = transformers.EsmModel(ref_config, add_pooling_layer=False)
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        ref = (
            transformers.EsmModel.from_pretrained(
                folder, add_pooling_layer=False, dtype=dtype, attn_implementation="sdpa"
            )
            .to(device)
            .eval()
        )
        ours = EsmModel.from_pretrained(folder, add_pooling_layer=False, dtype=dtype, device=device)

    ids, mask = make_batch(lengths, config_dict["vocab_size"], args.seed)
    ids, mask = ids.to(device), mask.to(device)
    tokens = int(mask.sum())
    models = {"transformers": ref, "esmpipe": ours}
    times, outputs = time_models(models, ids, mask, args.repeats, args.warmup, device)
    results = {
        name: {
            "best_s": min(t),
            "median_s": statistics.median(t),
            "tokens_per_s": tokens / min(t),
        }
        for name, t in times.items()
    }
    real = mask.bool()
    diff = (
        (outputs["esmpipe"][real].float() - outputs["transformers"][real].float())
        .abs()
        .max()
        .item()
    )
    report = {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "batch": args.batch,
        "lengths": lengths,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
        "ratio_esmpipe_over_transformers": results["esmpipe"]["tokens_per_s"]
        / results["transformers"]["tokens_per_s"],
        "max_abs_diff": diff,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.preset} on {device} ({args.dtype}), batch {args.batch}, {tokens} real tokens, "
            f"{torch.get_num_threads()} threads"
        )
        for name, r in results.items():
            print(
                f"  {name:13s} {r['tokens_per_s']:12.1f} tokens/s  "
                f"(best {r['best_s'] * 1e3:.1f} ms, "
                f"median {r['median_s'] * 1e3:.1f} ms)"
            )
        print(f"  ratio esmpipe/transformers: {report['ratio_esmpipe_over_transformers']:.3f}")
        print(f"  max |difference| of last hidden states at real tokens: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
