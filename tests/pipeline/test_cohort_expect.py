"""The `expect` contract between the workflow's key record and the planner and gatherer.

The workflow passes its cache key record (esmpipe.pipeline.identity.cache_key on
wip/workflow) verbatim as `esmpipe shard --settings`; its `expect` names what every
reused part's metadata (written by `run_metadata`) must hold.
"""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.io.tables import write_parquet_atomic
from esmpipe.pipeline.gather import GatherError, gather_stage
from esmpipe.pipeline.plan import part_accepts, read_manifest

from .conftest import fake_compute

IDENTITY = "sha256:" + "ab" * 32
RUN = {"model_identity": IDENTITY, "dtype": "float32", "output_version": 1}


def key_record(**expect) -> dict:
    """A key record shaped like the workflow's (identity.cache_key)."""
    wanted = {**RUN, **expect}
    return {"stage": "embed", **wanted, "settings": {"layers": [-1], "include": ["mean"],
                                                     "lm_score": "none"},
            "key": "k", "cache_dir": "cache", "model": "m", "revision": None,
            "expect": wanted}


def shard(cohort, record: dict) -> dict:
    root = cohort["root"]
    assert main(["shard", "--stage", "embed", "--ingest", *map(str, cohort["ingest"]),
                 "--cache-dir", str(root / "cache"), "--output-dir", str(root / "plan"),
                 "--settings", json.dumps(record), "--shard-size", "1",
                 "--cost-exponent", "1"]) == 0
    return read_manifest(root / "plan")


def compute(cohort, manifest: dict, metadata: dict) -> None:
    root = cohort["root"]
    for s in manifest["shards"]:
        out = fake_compute("embed", root / "plan" / "shards" / f"{s['shard_id']}.parquet",
                           root / "cache" / f"{s['shard_id']}.parquet")
        write_parquet_atomic(pq.read_table(out), out, metadata)


def test_part_accepts_needs_every_key_present_and_equal():
    assert part_accepts({**RUN, "model": "m"}, RUN)
    assert part_accepts({}, {})
    assert not part_accepts({**RUN, "dtype": "bfloat16"}, RUN)
    # A part from before the key (no model_identity) or whose job could not tell it.
    assert not part_accepts({"dtype": "float32", "output_version": 1}, RUN)
    assert not part_accepts({**RUN, "model_identity": None}, RUN)
    assert not part_accepts({**RUN, "model_identity": None}, {**RUN, "model_identity": None})
    # JSON keeps types: output_version 1 is not "1".
    assert not part_accepts({**RUN, "output_version": "1"}, RUN)


def test_the_workflows_key_record_as_settings(cohort):
    first = shard(cohort, key_record())
    n = len(cohort["distinct"])
    assert first["counts"]["planned"] == n
    compute(cohort, first, {**RUN, "model": "m", "revision": None, "device": "cpu"})
    assert shard(cohort, key_record())["counts"] == {"cached": n, "planned": 0, "too_long": 0}
    # The same parts under a record that expects another precision or version: no hits.
    assert shard(cohort, key_record(dtype="bfloat16"))["counts"]["cached"] == 0
    assert shard(cohort, key_record(output_version=2))["counts"]["cached"] == 0


@pytest.mark.parametrize("metadata", [
    {"model": "m", "dtype": "float32", "output_version": 1},  # written before the key
    {**RUN, "model_identity": None},  # identity unknown to the job
])
def test_parts_without_a_known_identity_are_computed_again(cohort, metadata):
    first = shard(cohort, key_record())
    compute(cohort, first, metadata)
    again = shard(cohort, key_record())
    assert again["counts"]["cached"] == 0
    assert again["counts"]["planned"] == len(cohort["distinct"])


def test_gather_refuses_a_part_that_does_not_match_the_key(cohort):
    """A job that ran another precision than the key says (or a part replaced since
    planning) must not land in the tables as if it matched."""
    root = cohort["root"]
    manifest = shard(cohort, key_record())
    compute(cohort, manifest, RUN)
    bad = manifest["shards"][0]["shard_id"]
    part = root / "cache" / f"{bad}.parquet"
    write_parquet_atomic(pq.read_table(part), part, {"dtype": "bfloat16"})
    with pytest.raises(GatherError, match="dtype 'bfloat16', expected 'float32'"):
        gather_stage(root / "plan", root / "results" / "embeddings", root / "status.parquet")
    counts = gather_stage(root / "plan", root / "results" / "embeddings",
                          root / "status.parquet", allow_missing=True,
                          log_pattern="logs/{stage}/{shard}.log")
    lost = set(pq.read_table(root / "plan" / "shards" / f"{bad}.parquet")["seq_hash"]
               .to_pylist())
    assert counts["not_computed"] == len(lost) > 0
    status = {r["seq_hash"]: r for r in pq.read_table(root / "status.parquet").to_pylist()}
    assert {h for h, r in status.items() if r["status"] == "not_computed"} == lost
    assert {status[h]["log"] for h in lost} == {f"logs/embed/{bad}.log"}
    emb = ds.dataset(root / "results" / "embeddings").to_table(columns=["seq_hash"])
    assert set(emb["seq_hash"].to_pylist()) == cohort["distinct"] - lost
