"""benchmarks/gpu_fold.sh runs end to end (its --tiny CPU mode; the GPU run is manual)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_fold_script_tiny_mode_runs_both_sides(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "gpu_fold.csv"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_fold.sh"), "--tiny", "--lengths", "8",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speed-up" in done.stdout
    lines = out.read_text().splitlines()
    assert lines[0].startswith("length,side,seconds,peak_mib")
    assert len(lines) == 3  # transformers and esmpipe at 8 residues
