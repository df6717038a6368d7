"""The default shard sizes give a sane number of GPU jobs (and gathered files) at 1M records."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from esmpipe.pipeline.config import validate_config
from esmpipe.pipeline.sharding import sequence_costs, shard_count

ROOT = Path(__file__).resolve().parents[2]


def config(text: dict) -> dict:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    return validate_config(text, schema)


@pytest.mark.parametrize("source", ["schema defaults", "config/config.yaml"])
def test_a_million_records_make_hundreds_of_jobs_per_stage(source):
    if source == "schema defaults":
        settings = config({"samples": "s.tsv", "embed": {"model": "m"}, "fold": {"model": "m"}})
    else:
        settings = config(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    # The benchmark cohort: 1M records, ~625,000 distinct, lengths uniform in [30, 500).
    lengths = np.random.default_rng(0).integers(30, 500, size=625_000)
    jobs = {}
    for stage in ("embed", "fold"):
        size, exponent = settings[stage]["shard_size"], settings[stage]["cost_exponent"]
        jobs[stage] = shard_count(sequence_costs(lengths, exponent), len(lengths), size)
    # Fold made ~10,000 jobs of minutes each (and files) with the old 2,000.
    assert 100 <= jobs["fold"] <= 1000, jobs
    assert 10 <= jobs["embed"] <= 1000, jobs
