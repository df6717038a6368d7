"""The shard files a plan writes: members, their order and their text.

The planner writes shards without sorting the text as a whole (buckets of shards,
text read back from the ingest tables by row). These tests pin what comes out:
against an in-memory reference (`make_shards` over the distinct sequences) and
against a digest of the files that the planner wrote before that change."""

from __future__ import annotations

import hashlib
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.pipeline import plan as plan_module
from esmpipe.pipeline.plan import plan_stage
from esmpipe.pipeline.sharding import make_shards, settings_key

from .conftest import digest, protein, write_ingest

SETTINGS = {"model": "m1"}


def make_cohort(root, *, seed: int = 11, samples: int = 6, per_sample: int = 40):
    """Samples sharing a pool of sequences, with repeats inside a sample, invalid records,
    and one table in many small row groups. Returns (paths, hash -> sequence)."""
    rng = random.Random(seed)
    pool = [protein(rng, rng.randrange(20, 160)) for _ in range(60)]
    # Equal lengths on purpose: ties in length are ordered by hash.
    pool += [protein(rng, 77) for _ in range(8)]
    paths, text = [], {}
    for k in range(samples):
        records = []
        for i in range(per_sample):
            if i % 13 == 5:
                records.append((f"s{k}_{i}", "", "empty"))
                continue
            seq = rng.choice(pool) if rng.random() < 0.6 else protein(rng, rng.randrange(20, 300))
            records.append((f"s{k}_{i}", seq, "ok"))
            if i % 11 == 0:  # the same sequence twice in a row of one sample
                records.append((f"s{k}_{i}b", seq, "ok"))
            text[digest(seq)] = seq
        path = write_ingest(root / "ingest" / f"s{k}.parquet", f"s{k}", records)
        if k == 2:  # many row groups: the text is read back group by group
            table = pq.read_table(path)
            pq.write_table(table, path, row_group_size=7)
        paths.append(path)
    return paths, text


def plan(root, paths, *, stage="embed", shard_size=2.0, exponent=1.0, name="plan"):
    return plan_stage(paths, stage=stage, settings=SETTINGS, cache_dir=root / "cache",
                      output_dir=root / name, shard_size=shard_size, cost_exponent=exponent,
                      max_length=None)


def shard_rows(root, manifest, name="plan"):
    return {s["shard_id"]: pq.read_table(root / name / "shards" / f"{s['shard_id']}.parquet")
            for s in manifest["shards"]}


# Small shards (many, a few members each) and large ones (members of equal length in
# one shard, ordered by hash).
CONFIGS = [("embed", 2.0, 1.0), ("fold", 0.5, 3.0), ("embed", 40.0, 1.0)]


@pytest.mark.parametrize("stage,shard_size,exponent", CONFIGS)
@pytest.mark.parametrize("bucket", [None, 200])
def test_shards_equal_the_in_memory_reference(tmp_path, monkeypatch, stage, shard_size,
                                              exponent, bucket):
    if bucket is not None:  # tiny buckets (several, one shard each), flushed often
        monkeypatch.setattr(plan_module, "BUCKET_RESIDUES", bucket)
        monkeypatch.setattr(plan_module, "BUFFER_BYTES", 2000)
    paths, text = make_cohort(tmp_path)
    manifest = plan(tmp_path, paths, stage=stage, shard_size=shard_size, exponent=exponent)
    expected = make_shards([(h, len(s)) for h, s in text.items()], shard_size=shard_size,
                           exponent=exponent, key=settings_key(SETTINGS))
    assert len(expected) >= 3
    assert [s["shard_id"] for s in manifest["shards"]] == [s.shard_id for s in expected]
    files = shard_rows(tmp_path, manifest)
    for shard, entry in zip(expected, manifest["shards"], strict=True):
        table = files[shard.shard_id]
        assert table.schema.names == ["seq_hash", "sequence", "length"]
        assert table.schema.field("length").type == pa.int32()
        assert table.column("seq_hash").to_pylist() == list(shard.seq_hashes)
        assert table.column("length").to_pylist() == list(shard.lengths)
        assert table.column("sequence").to_pylist() == [text[h] for h in shard.seq_hashes]
        assert entry["sequences"] == len(shard.seq_hashes)
        assert entry["residues"] == sum(shard.lengths)
        assert entry["cost"] == round(shard.cost, 3)
        assert b"esmpipe" in (table.schema.metadata or {})


def files_digest(root, manifest, name="plan") -> str:
    h = hashlib.sha256()
    for shard_id, table in sorted(shard_rows(root, manifest, name).items()):
        h.update(shard_id.encode())
        for row in table.to_pylist():
            h.update(f"\0{row['seq_hash']}\0{row['sequence']}\0{row['length']}".encode())
    return h.hexdigest()


# Written by the planner of main 0ae48cd (global ORDER BY of the text), this cohort.
GOLDEN = {
    ("embed", 2.0): "e5340dbce46632ef5f34678fb0d2fadcfef288f2e4f56f2b2e7a57ca8fbd5583",
    ("fold", 0.5): "33c0adab1c1f1e163086d8a56605100573c40b62390491ef4db03c555a705d11",
    ("embed", 40.0): "f69f7ae5188ae6e8027966bbf531704c6545a70fdb1b63b473ab58554e5885d3",
}


@pytest.mark.parametrize("stage,shard_size,exponent", CONFIGS)
def test_shard_files_are_those_of_the_earlier_planner(tmp_path, stage, shard_size, exponent):
    paths, _ = make_cohort(tmp_path)
    manifest = plan(tmp_path, paths, stage=stage, shard_size=shard_size, exponent=exponent)
    assert files_digest(tmp_path, manifest) == GOLDEN[stage, shard_size]


def test_shard_files_do_not_depend_on_sample_order(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "BUCKET_RESIDUES", 300)
    paths, _ = make_cohort(tmp_path)
    forward = plan(tmp_path, paths, name="p1")
    backward = plan(tmp_path, paths[::-1], name="p2")
    assert forward["shards"] == backward["shards"]
    assert files_digest(tmp_path, forward, "p1") == files_digest(tmp_path, backward, "p2")
