"""Faults: Snakemake killed during the fold stage and re-run with the same command; a
fold shard that fails after its retries, the summary and the partial tables.

Both start from a copy of the demo run with the fold stage's results removed, so
that the fold stage (and what follows it) runs again while ingest and embed are
done: what the re-runs must not touch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from esmpipe.pipeline.config import cli_supports

from .runner import SNAKEFILE, copy_run, local_run_args, snakemake

pytestmark = pytest.mark.workflow


def without_fold(demo_run: Path, target: Path) -> Path:
    workdir = copy_run(demo_run, target)
    for path in ("results/cache/fold", "results/structures", "results/proteins",
                 "results/report", "work/status/structures.parquet", "logs/fold"):  # fmt: skip
        p = workdir / path
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return workdir


def table(workdir: Path, name: str, by: list[str]) -> list[dict]:
    t = ds.dataset(workdir / "results" / name, format="parquet").to_table()
    return t.sort_by([(c, "ascending") for c in by]).to_pylist()


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    """Equal rows; floats to rounding (a resumed shard batches its rest differently)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float) or (isinstance(w[k], list) and w[k]
                                           and isinstance(w[k][0], float)):  # fmt: skip
                np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-4, err_msg=k)
            else:
                assert g[k] == w[k], k


def files_with_mtimes(folder: Path) -> dict[str, int]:
    """Finished Parquet files (not the hidden partial outputs of running jobs)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.parquet")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}  # fmt: skip


def inodes(folder: Path) -> dict[str, int]:
    found = {p.name: p.stat().st_ino for p in folder.glob("*.parquet")}
    assert found, f"no Parquet files in {folder}"
    return found


def test_killed_during_fold_and_rerun(demo_run, demo_env, tmp_path):
    workdir = without_fold(demo_run, tmp_path / "killed")
    kept = {d: files_with_mtimes(workdir / d) for d in ("work/ingest", "results/cache/embed")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *local_run_args()]

    with (tmp_path / "first.log").open("w") as out:
        run = subprocess.Popen(cmd, cwd=workdir, env=demo_env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    # Kill the whole process group once a fold job has finished a batch, mid-shard.
    deadline = time.monotonic() + 300
    chunks: list[Path] = []
    while time.monotonic() < deadline and run.poll() is None:
        chunks = list((workdir / "results" / "cache" / "fold").glob("*/.*.partial/chunk-*"))
        if chunks:
            break
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the fold stage: " + \
        (tmp_path / "first.log").read_text()[-3000:]  # fmt: skip
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert chunks, "no fold batch finished in time"
    assert not (workdir / "results" / "structures").exists()
    done_before = files_with_mtimes(workdir / "results" / "cache" / "fold")

    result = snakemake(workdir, *local_run_args(), env=demo_env)  # the same command
    out = result.stdout + result.stderr
    # Nothing that had finished ran again: no ingest or embed job, same files.
    assert not re.search(r"^(local)?rule (ingest|embed|plan):$", out, re.M), out[-4000:]
    for d, before in kept.items():
        assert files_with_mtimes(workdir / d) == before
    after = files_with_mtimes(workdir / "results" / "cache" / "fold")
    assert all(after[name] == mtime for name, mtime in done_before.items())
    # The shard killed mid-way resumed from its finished batches.
    resumed = [p for p in (workdir / "logs" / "fold").rglob("*.log") if "resuming" in p.read_text()]
    assert resumed

    assert_rows_equal(table(workdir, "structures", ["seq_hash"]),
                      table(demo_run, "structures", ["seq_hash"]))  # fmt: skip
    assert_rows_equal(table(workdir, "proteins", ["sample", "protein_id"]),
                      table(demo_run, "proteins", ["sample", "protein_id"]))  # fmt: skip
    assert "esmpipe run summary: finished" in (workdir / "logs" / "summary.txt").read_text()


def test_a_shard_failing_after_retries(demo_run, demo_env, tmp_path):
    workdir = without_fold(demo_run, tmp_path / "failing")
    manifest = json.loads((workdir / "work" / "plan" / "fold" / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 2
    bad = manifest["shards"][0]["shard_id"]
    # A shard input that cannot be read: its job fails on every attempt.
    with (workdir / "work" / "plan" / "fold" / "shards" / f"{bad}.parquet").open("r+b") as f:
        f.write(b"not parquet")

    result = snakemake(workdir, *local_run_args(), "--config", "partial=true",
                       env=demo_env, check=False)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0
    # Each retry asked for more runtime (the profile retries twice).
    runtimes = [int(m) for m in re.findall(
        rf"output: results/cache/fold/\w+/{bad}\.parquet\n(?:    .*\n)*?    resources: .*?"
        r"runtime=(\d+)", out)]  # fmt: skip
    assert runtimes == sorted(runtimes) and len(set(runtimes)) == 3, runtimes

    summary = (workdir / "logs" / "summary.txt").read_text()
    key = Path(manifest["cache_dir"]).name
    assert "FAILED" in summary and f"failed: fold {bad}" in summary
    assert f"log: logs/fold/{key}/{bad}.log" in summary
    assert "1/2 done" in summary.split("fold", 1)[1].splitlines()[0] or \
        f"{len(manifest['shards']) - 1}/{len(manifest['shards'])} done" in summary
    assert summary in out  # printed at the end of the run too

    if not cli_supports("gather", "--allow-missing"):
        pytest.skip("partial tables need `esmpipe gather --allow-missing` (cohort part)")
    structures = ds.dataset(workdir / "results" / "structures", format="parquet").to_table()
    assert structures.num_rows > 0
    proteins = ds.dataset(workdir / "results" / "proteins", format="parquet").to_table()
    proteins = proteins.to_pandas()
    missing = proteins[proteins["fold_status"] == "not_computed"]
    assert len(missing) > 0
    assert (missing["log"] == f"logs/fold/{key}/{bad}.log").all()
    # Every input record is still there.
    assert len(proteins) == len(ds.dataset(demo_run / "results" / "proteins").to_table())
    # Like gather.smk, the partial gathers keep hard links of their files for the next
    # gather to reuse (work/gathered/ came with the copy: separate files until then).
    for name in ("structures", "proteins"):
        assert inodes(workdir / "results" / name) == inodes(workdir / "work" / "gathered" / name)



def test_stale_lock_is_removed_only_when_its_run_is_gone(tmp_path):
    from esmpipe.pipeline import runlock

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")
    owner = tmp_path / runlock.OWNER_FILE
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def held_by(host: str, pid: int) -> None:
        owner.write_text(json.dumps({"host": host, "pid": pid}))

    # A live Snakemake (faked: a process whose command line says snakemake) keeps its lock.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake"])
    try:
        cmdline = Path(f"/proc/{live.pid}/cmdline")
        for _ in range(200):  # until it has exec'd
            if b"snakemake" in cmdline.read_bytes():
                break
            time.sleep(0.02)
        held_by(runlock.socket.gethostname(), live.pid)
        assert not runlock.remove_stale_locks(tmp_path) and locks.is_dir()
    finally:
        live.kill()
        live.wait()
    held_by("another-host", dead.pid)
    assert not runlock.remove_stale_locks(tmp_path) and locks.is_dir()
    held_by(runlock.socket.gethostname(), dead.pid)
    assert runlock.remove_stale_locks(tmp_path) and not locks.exists()
