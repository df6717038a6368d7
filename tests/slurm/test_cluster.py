"""The test cluster itself: a GPU request is scheduled and recorded by SLURM."""

import time

import pytest

pytestmark = pytest.mark.slurm


def test_gpu_job_is_recorded(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    result = slurm_cluster._run("sbatch", "--parsable", "--gpus=1", "--comment", "probe",
                                "-o", str(out), "--wrap", "echo gpus=$SLURM_GPUS_ON_NODE")
    job_id = result.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = next(j for j in slurm_cluster.jobs() if j["JobId"] == job_id)
        if job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.5)
    assert job["JobState"] == "COMPLETED", job
    assert "gpu:1" in job.get("TresPerJob", ""), job
    assert out.read_text().strip() == "gpus=1"
