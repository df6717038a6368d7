#!/usr/bin/env bash
# ESM-2 650M embedding throughput and peak GPU memory: esmpipe's engine (its defaults:
# bfloat16, or float16 without bf16; packed variable-length attention) against
# transformers EsmModel in the same dtype (SDPA, length-sorted batches) and in its
# default float32, on the same random weights; plus how far each half-precision
# run's embeddings are from the float32 ones. Under 5 minutes on one GPU.
#
#   PYTHONPATH=. bash benchmarks/gpu_embed.sh            # on a GPU machine
#   PYTHONPATH=. bash benchmarks/gpu_embed.sh --tiny     # CPU smoke test, seconds
#
# Options: --tiny, --proteins N (default 1000), --hf-tokens N (padded tokens per
# transformers batch, default 16384), --repeats N (default 2). Figures are printed
# and written to $OUT/gpu_embed.json when OUT is set. Imports torch, transformers,
# safetensors (through the loaders), pyarrow and pandas only, plus esmpipe from
# the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
exec python - "$@" <<'PY'
import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time

import pandas as pd
import pyarrow  # noqa: F401  (the environment the script promises)
import torch
import transformers

from esmpipe.engine.embed import Embedder
from esmpipe.models import EsmModel, EsmTokenizer
from esmpipe.models.presets import get_preset

parser = argparse.ArgumentParser()
parser.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny model")
parser.add_argument("--proteins", type=int, default=None)
parser.add_argument("--hf-tokens", type=int, default=16384)
parser.add_argument("--repeats", type=int, default=2)
args = parser.parse_args()

cuda = torch.cuda.is_available() and not args.tiny
device = torch.device("cuda" if cuda else "cpu")
if cuda:
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
else:
    half = torch.bfloat16  # CPU smoke test: exercises the same code paths
preset = get_preset("tiny-esm2" if args.tiny else "esm2_t33_650M")
n_proteins = args.proteins or (24 if args.tiny else 1000)

# Lengths like real proteins: log-normal, median 300, within 30..1000 residues.
rng = random.Random(0)
lengths = []
while len(lengths) < n_proteins:
    value = int(math.exp(rng.gauss(math.log(300), 0.6)))
    if 30 <= value <= 1000:
        lengths.append(value)
sequences = ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=n)) for n in lengths]
residues = sum(lengths)


def sync():
    if cuda:
        torch.cuda.synchronize()


def measure(name, fn):
    """(best seconds, peak memory GiB, output) of fn() over the repeats, after a warm-up."""
    fn_out = fn()  # warm-up (kernels, allocator)
    times = []
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        fn_out = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"  {name:22s} {min(times):7.2f} s  {residues / min(times):10,.0f} residues/s  "
          f"peak {peak:6.2f} GiB", flush=True)
    return {"name": name, "best_s": min(times), "median_s": statistics.median(times),
            "residues_per_s": residues / min(times), "peak_gib": peak}, fn_out


def hf_embed(model, tokenizer):
    """transformers as a careful user runs it: length-sorted batches of <= hf_tokens padded
    tokens, mean over residues."""
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * (lengths[current[0]] + 2) > args.hf_tokens:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    out = [None] * len(sequences)
    with torch.inference_mode():
        for batch in batches:
            enc = tokenizer([sequences[i] for i in batch], padding=True,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].clone()
            mask[:, 0] = 0
            mask[torch.arange(len(batch), device=device), enc["attention_mask"].sum(1) - 1] = 0
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            for i, vector in zip(batch, pooled.cpu(), strict=True):
                out[i] = vector
    return torch.stack(out)


with tempfile.TemporaryDirectory() as folder:
    config = transformers.EsmConfig(**preset.config_dict())
    torch.manual_seed(0)
    with torch.device(device):
        ref32 = transformers.EsmModel(config, add_pooling_layer=False)
    ref32.save_pretrained(folder)
    EsmTokenizer(vocab=list(preset.vocab)).save_pretrained(folder)
    ref32 = ref32.eval()
    ref_half = transformers.EsmModel.from_pretrained(
        folder, add_pooling_layer=False, dtype=half, attn_implementation="sdpa").to(device).eval()
    ours = EsmModel.from_pretrained(folder, add_pooling_layer=False, dtype=half,
                                    device=device).eval()
    hf_tokenizer = transformers.EsmTokenizer.from_pretrained(folder)
    tokenizer = EsmTokenizer.from_pretrained(folder)

print(f"ESM-2 {'tiny' if args.tiny else '650M'} shape, random weights, {n_proteins} proteins, "
      f"{residues:,} residues, {device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), "
      f"half = {half}")
embedder = Embedder(ours, tokenizer)
rows = []
r, e_ours = measure(f"esmpipe {str(half)[6:]}",
                    lambda: torch.stack([torch.from_numpy(x.embedding)
                                         for x in embedder.embed(sequences)]))
rows.append(r)
r, e_half = measure(f"transformers {str(half)[6:]}", lambda: hf_embed(ref_half, hf_tokenizer))
rows.append(r)
r, e_32 = measure("transformers float32", lambda: hf_embed(ref32, hf_tokenizer))
rows.append(r)
table = pd.DataFrame(rows).set_index("name")
table["speedup_vs_esmpipe"] = table["best_s"] / table.loc[rows[0]["name"], "best_s"]


def agreement(a, b):
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return {"max_abs": float((a - b).abs().max()), "min_cosine": float(cos.min()),
            "max_rel": float(((a - b).norm(dim=1) / b.norm(dim=1)).max())}


agree = {"esmpipe_half_vs_hf_fp32": agreement(e_ours, e_32),
         "hf_half_vs_hf_fp32": agreement(e_half, e_32),
         "esmpipe_half_vs_hf_half": agreement(e_ours, e_half)}
print(table.to_string(float_format=lambda v: f"{v:.3g}"))
for key, value in agree.items():
    print(f"  {key:26s} max|diff| {value['max_abs']:.2e}  max rel {value['max_rel']:.2e}  "
          f"min cosine {value['min_cosine']:.6f}")
print(f"  esmpipe speed-up over transformers {str(half)[6:]}: "
      f"{table.iloc[1]['best_s'] / table.iloc[0]['best_s']:.2f}x; over float32: "
      f"{table.iloc[2]['best_s'] / table.iloc[0]['best_s']:.2f}x")
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "gpu_embed.json"), "w") as handle:
        json.dump({"runs": rows, "agreement": agree, "residues": residues,
                   "proteins": n_proteins, "device": str(device)}, handle, indent=1)
PY
