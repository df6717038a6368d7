"""Folding memory: the automatic chunk size, the out-of-memory ladder (split, then halve
the chunk, then mark) with injected errors, the fp16 stem loaded as fp16, fp32 heads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from esmpipe.engine.fold import (
    MEMORY_HEADROOM,
    FoldingEngine,
    auto_chunk_size,
    trunk_memory,
)
from esmpipe.models import EsmForProteinFolding

SEQUENCES = ["MKVLLAGGWQ", "ACDEFGHIKLMNPQRSTVWY", "MKVAAAGLLEKKAAL"]
OOM = torch.cuda.OutOfMemoryError


@pytest.fixture(scope="module")
def model(tiny_esmfold: Path) -> EsmForProteinFolding:
    return EsmForProteinFolding.from_pretrained(tiny_esmfold, dtype=torch.float32).eval()


def test_memory_model_and_auto_chunk_size() -> None:
    # esmfold_v1 pair width, fp32, 1,000 residues: one pair state is 488 MiB.
    unit = 1000 * 1000 * 128 * 4
    assert trunk_memory(1, 1000, 128, 4, None) == 15 * unit  # 7 held + 4 + 4 temporaries
    assert trunk_memory(1, 1000, 128, 4, 250) == 12 * unit
    # A batch: 7 held per protein, the pair transition's 6 per protein (> 8 of one tri-mul).
    assert trunk_memory(4, 100, 128, 4, None) == (7 * 4 + 6 * 4) * 100 * 100 * 128 * 4
    # Plenty of memory (or unknown): unchunked, whatever the length.
    assert auto_chunk_size(1, 1000, 128, 4, 100 * 2**30) is None
    assert auto_chunk_size(1, 1000, 128, 4, None) is None
    # Tight: the largest power of two that fits, and never below the floor.
    free = int(trunk_memory(1, 1000, 128, 4, 128) / MEMORY_HEADROOM) + 1
    assert auto_chunk_size(1, 1000, 128, 4, free) == 128
    assert auto_chunk_size(1, 1000, 128, 4, 2**20) == 16
    assert auto_chunk_size(1, 1000, 128, 4, 2**20, min_chunk_size=4) == 4
    # More proteins need more memory, so a batch gets a chunk where one protein does not.
    free = int(trunk_memory(1, 300, 64, 4, None) / MEMORY_HEADROOM) + 1
    assert auto_chunk_size(1, 300, 64, 4, free) is None
    assert auto_chunk_size(8, 300, 64, 4, free) is not None


def test_the_engine_chunks_only_when_memory_needs_it(model) -> None:
    roomy = FoldingEngine(model, num_recycles=0, free_memory=lambda: 2**40)
    roomy.fold(SEQUENCES[:1])
    assert roomy.last_chunk_size is None and model.trunk.chunk_size is None
    tight = FoldingEngine(model, num_recycles=0, min_chunk_size=2, free_memory=lambda: 2**10)
    (result,) = tight.fold(SEQUENCES[:1])
    assert tight.last_chunk_size == 2 and result.status == "ok"
    explicit = FoldingEngine(model, num_recycles=0, chunk_size=3, free_memory=lambda: 2**10)
    explicit.fold(SEQUENCES[:1])
    assert explicit.last_chunk_size == 3  # --chunk-size overrides
    model.set_chunk_size(None)


def test_oom_ladder_splits_then_halves_the_chunk_then_marks(model, monkeypatch) -> None:
    real_infer = model.infer
    calls: list[tuple[int, int | None]] = []

    def infer(sequences, **kwargs):
        chunk = model.trunk.chunk_size
        calls.append((len(sequences), chunk))
        if len(sequences) > 1:
            raise OOM("CUDA out of memory (injected: batch)")
        (seq,) = sequences
        if seq == SEQUENCES[1] and (chunk is None or chunk > 4):
            raise OOM("CUDA out of memory (injected: needs chunk <= 4)")
        if seq == SEQUENCES[2]:
            raise OOM("CUDA out of memory (injected: never fits)")
        return real_infer(sequences, **kwargs)

    monkeypatch.setattr(model, "infer", infer)
    engine = FoldingEngine(model, num_recycles=0, max_batch_size=3, padding_bound=100.0,
                           min_chunk_size=2, free_memory=lambda: 2**40)  # fmt: skip
    results = engine.fold(SEQUENCES)
    assert [r.status for r in results] == ["ok", "ok", "out_of_memory"]
    assert results[2].plddt is None and results[2].pdb is None and results[2].flags == []
    # First the whole batch, then halves, then single proteins.
    assert calls[0] == (3, None) and calls[1][0] == 1
    # The 20-residue protein: unchunked, then 10, 5 (both fail), then 2 (fits).
    tried = [c for n, c in calls if n == 1]
    assert tried.count(10) >= 1 and tried.count(5) >= 1 and 2 in tried
    # The never-fitting 15-residue protein was tried at 7, 3 (halving, floor 2) and marked.
    assert 7 in tried and 3 in tried
    assert engine._forced_chunk is None  # the ladder leaves no setting behind
    model.set_chunk_size(None)
    # The rescued protein's values equal an unchunked fold's.
    monkeypatch.setattr(model, "infer", real_infer)
    (alone,) = FoldingEngine(model, num_recycles=0).fold([SEQUENCES[1]])
    np.testing.assert_allclose(results[1].plddt, alone.plddt, atol=1e-4, rtol=0)


def test_fp16_stem_loads_straight_into_fp16_and_heads_stay_fp32(tiny_esmfold: Path) -> None:
    model = EsmForProteinFolding.from_pretrained(tiny_esmfold, stem_dtype=torch.float16)
    assert {p.dtype for p in model.esm.parameters()} == {torch.float16}
    assert {p.dtype for p in model.trunk.parameters()} == {torch.float32}
    bf16 = EsmForProteinFolding.from_pretrained(tiny_esmfold, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = bf16.infer(["MKVLLAGGW"], num_recycles=0)
    assert out.ptm.dtype == torch.float32 and out.plddt.dtype == torch.float32
    assert out.predicted_aligned_error.dtype == torch.float32
    assert torch.isfinite(out.ptm).all() and torch.isfinite(out.plddt).all()


_FAULTS_SCRIPT = """
import resource, sys, torch
from esmpipe.engine.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():  # a trunk block's pattern: large temporaries of a few sizes, two alive at once
    a = torch.ones(2**24)
    b = torch.ones(3 * 2**22) + a[: 3 * 2**22]
    del a
    c = torch.ones(2**24 + 2**20)
    return float(b.sum() + c.sum())
for _ in range(3):  # heap warm-up
    block()
before = faults()
for _ in range(5):
    block()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_large_blocks() -> None:
    # Five rounds of 48-68 MiB temporaries: fresh mappings fault every page (about
    # 290,000 pages of 4 KiB); with freed memory kept most come back from the heap.
    # Not zero: where a block lands depends on the heap's alignment (ASLR), and a
    # freed block a few bytes too small for the next request is passed over once.
    def run(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], check=True,
                             capture_output=True, text=True)  # fmt: skip
        return int(out.stdout.split()[-1])

    default = run("default")
    assert default > 200_000
    assert run("keep") < default / 5
