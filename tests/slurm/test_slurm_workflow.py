"""The demo through a real SLURM with `--profile profiles/slurm`: GPU rules must
request a GPU from SLURM, and the tables must equal those of the local run.

The run reuses the local demo run (tests/workflow): it copies that working
directory and removes the plans, caches and results, and two samples' ingest
tables, so SLURM runs one CPU job (the profile groups ingest jobs: both samples
in one cluster job) and every GPU job (embed, fold).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pytest

# tests/ is on sys.path (pytest's rootdir-relative import of test packages).
from workflow.runner import PROFILES, copy_run, demo_run, esmpipe_env, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

GPU_RULES = ("embed", "fold")


def sorted_table(workdir: Path, name: str, columns: list[str]):
    table = ds.dataset(workdir / "results" / name, format="parquet").to_table(columns=columns)
    return table.sort_by([(c, "ascending") for c in columns]).to_pylist()


def test_demo_through_slurm(slurm_cluster, tmp_path_factory):
    local_env = esmpipe_env(tmp_path_factory.mktemp("env"))
    local = demo_run(tmp_path_factory, local_env)
    workdir = copy_run(local, tmp_path_factory.mktemp("slurm-run") / "demo")
    reingested = ("sample_a", "sample_c")
    for path in ("results", "work/plan", "work/status",
                 *(f"work/ingest/{sample}.parquet" for sample in reingested)):
        target = workdir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    env = esmpipe_env(tmp_path_factory.mktemp("slurm-env"), slurm_cluster.env())
    snakemake(
        workdir,
        "--profile", str(PROFILES / "slurm"),
        "--configfile", "config/demo.yaml",
        # Test overrides of site settings: the cluster's partition, small memory.
        "--default-resources", f"slurm_partition={slurm_cluster.partition}", "mem_mb=500",
        "runtime=30",
        "--set-resources", "embed:mem_mb=800", "fold:mem_mb=800", "ingest:mem_mb=500",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-no-account",
        "--latency-wait", "5",
        env=env,
        timeout=900,
    )

    # The plugin labels each job with `--comment rule_<rule>_wildcards_<...>`.
    jobs = [job for job in slurm_cluster.jobs() if job.get("Comment", "").startswith("rule_")]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        # A group job is named "<group id>_<its rules>": the ingest group holds only ingest.
        if rule.endswith("_ingest"):
            rule = "ingest"
        by_rule.setdefault(rule, []).append(job)
    assert set(GPU_RULES) <= set(by_rule), jobs
    # Both samples' ingest jobs ran in one cluster job, each writing its own table.
    assert len(by_rule["ingest"]) == 1, by_rule["ingest"]
    for sample in reingested:
        assert (workdir / "work" / "ingest" / f"{sample}.parquet").is_file()
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            assert job["JobState"] == "COMPLETED", job
            gpu_request = job.get("TresPerJob", "") + job.get("TresPerNode", "")
            if rule in GPU_RULES:
                # SLURM's own record of the job: it asked for, and got, one GPU.
                assert "gpu:1" in gpu_request, job
            else:
                assert "gpu" not in gpu_request, job

    for name, columns in (("proteins", ["sample", "protein_id", "seq_hash", "status"]),
                          ("embeddings", ["seq_hash"]),
                          ("structures", ["seq_hash", "length"])):
        assert sorted_table(workdir, name, columns) == sorted_table(local, name, columns)
