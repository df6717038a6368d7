#!/usr/bin/env bash
# ESMFold on one GPU: esmpipe's FoldingEngine (its defaults: automatic chunk size,
# fp16 stem, fp32 trunk) against transformers' EsmForProteinFolding.infer, on the
# esmfold_v1 dimensions with random weights (ESM-2 3B stem in fp16, 48 trunk blocks,
# 8 structure-module blocks), both sides sharing one set of weight tensors.
#
# Reported per length (128, 384, 1000) and side: seconds for one fold, peak GPU
# memory above the weights (torch.cuda.max_memory_allocated), pTM and mean pLDDT.
# The reference runs unchunked at 128 and 384 and with trunk chunk size 64 at 1,000
# (unchunked it needs far more memory); esmpipe picks its chunk size itself.
# One trunk pass (--passes 1, i.e. max_recycles = 1 in both configs) by default, so
# the whole script stays under 6 minutes on one GPU; --passes 4 is esmfold_v1's default.
#
#   bash benchmarks/gpu_fold.sh                      # on a GPU machine, repo root
#   bash benchmarks/gpu_fold.sh --tiny               # seconds-long check on the CPU
#   bash benchmarks/gpu_fold.sh --out results.csv    # also write the table
#
# Imports only torch, transformers, safetensors, pyarrow, pandas and esmpipe
# (PYTHONPATH=. is set here).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" - "$@" <<'PY'
import argparse
import time

import pandas as pd
import torch
import transformers

from esmpipe.engine.fold import FoldingEngine
from esmpipe.models import EsmConfig, EsmForProteinFolding
from esmpipe.models.config import ESM2_VOCAB

parser = argparse.ArgumentParser(prog="gpu_fold.sh")
parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a check)")
parser.add_argument("--lengths", type=int, nargs="+", default=None)
parser.add_argument("--passes", type=int, default=1,
                    help="trunk passes (the configs' max_recycles; esmfold_v1: 4)")
parser.add_argument("--reference-chunk", type=int, default=64,
                    help="the reference's trunk chunk size at 1,000 residues and above")
parser.add_argument("--out", default=None, help="also write the table as CSV")
args = parser.parse_args()

stem = dict(model_type="esm", vocab_size=33, pad_token_id=1, mask_token_id=32,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=1026, layer_norm_eps=1e-5,
            position_embedding_type="rotary", emb_layer_norm_before=False,
            token_dropout=True, is_folding_model=True, vocab_list=list(ESM2_VOCAB))
if args.tiny:
    device = torch.device("cpu")
    config = dict(stem, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, esmfold_config=dict(
                      fp16_esm=False, lddt_head_hid_dim=16,
                      trunk=dict(num_blocks=2, sequence_state_dim=64, pairwise_state_dim=32,
                                 sequence_head_width=32, pairwise_head_width=16,
                                 chunk_size=None, max_recycles=args.passes,
                                 structure_module=dict(num_blocks=2, ipa_dim=8,
                                                       num_heads_ipa=2))))
    lengths = args.lengths or [16, 32, 48]
    chunk_from = 48
else:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_fold.sh: no CUDA device (use --tiny for a CPU check)")
    device = torch.device("cuda")
    # facebook/esmfold_v1: ESM-2 t36 3B stem (fp16), 48-block trunk, 8 SM blocks.
    config = dict(stem, hidden_size=2560, num_hidden_layers=36, num_attention_heads=40,
                  intermediate_size=10240, esmfold_config=dict(
                      fp16_esm=True, lddt_head_hid_dim=128,
                      trunk=dict(num_blocks=48, sequence_state_dim=1024,
                                 pairwise_state_dim=128, sequence_head_width=32,
                                 pairwise_head_width=32, chunk_size=None,
                                 max_recycles=args.passes)))
    lengths = args.lengths or [128, 384, 1000]
    chunk_from = 1000

# Random weights, built on the device (a 3B stem initialised on the CPU takes minutes).
torch.manual_seed(0)
with device:
    reference = transformers.EsmForProteinFolding(transformers.EsmConfig(**config)).eval()
with torch.device("meta"):
    ours = EsmForProteinFolding(EsmConfig.from_dict(config))
# Same device and dtypes: the tensors are shared, not copied.
ours.load_checkpoint_state_dict(reference.state_dict(), device=device, source="reference")
ours.eval()
engine = FoldingEngine(ours)  # num_recycles None: max_recycles passes, as the reference
stem_dtype = next(ours.esm.parameters()).dtype
trunk_dtype = next(ours.trunk.parameters()).dtype


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn):
    """(seconds, peak bytes above the start or None, result) of one call."""
    sync()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = fn()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return seconds, peak, result


def run_reference(seq):
    chunk = args.reference_chunk if len(seq) >= chunk_from else None
    reference.trunk.set_chunk_size(chunk)
    with torch.no_grad():
        out = reference.infer(seq)
    ca = out["plddt"][0, :, 1].float() * 100
    return float(out["ptm"]), float(ca.mean()), chunk


def run_ours(seq):
    (result,) = engine.fold([seq])
    return result.ptm, result.mean_plddt, engine.last_chunk_size


rng = torch.Generator().manual_seed(0)
aa = "ARNDCQEGHILKMFPSTWYV"
print(f"# device={device} stem={stem_dtype} trunk={trunk_dtype} "
      f"passes={args.passes} torch={torch.__version__} "
      f"transformers={transformers.__version__}", flush=True)
# Warm-up (kernels, allocator) on a short chain, both sides.
warm = "".join(aa[i] for i in torch.randint(0, 20, (32,), generator=rng).tolist())
run_reference(warm)
run_ours(warm)
rows = []
for length in lengths:
    seq = "".join(aa[i] for i in torch.randint(0, 20, (length,), generator=rng).tolist())
    for side, fn in (("transformers", run_reference), ("esmpipe", run_ours)):
        try:
            seconds, peak, (ptm, plddt, chunk) = measure(lambda: fn(seq))
        except torch.cuda.OutOfMemoryError:
            seconds = peak = ptm = plddt = chunk = None
        rows.append({"length": length, "side": side, "seconds": seconds,
                     "peak_mib": None if peak is None else peak / 2**20,
                     "chunk_size": chunk, "ptm": ptm, "mean_plddt": plddt})
        print(rows[-1], flush=True)

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
wide = table.pivot(index="length", columns="side", values="seconds")
if {"transformers", "esmpipe"} <= set(wide.columns):
    print("speed-up (transformers / esmpipe seconds):")
    print((wide["transformers"] / wide["esmpipe"]).to_string(float_format=lambda x: f"{x:.2f}"))
if args.out:
    import os

    tmp = args.out + ".tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, args.out)
PY
