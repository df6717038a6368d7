"""A cohort of 5,000 tiny samples planned and gathered through `--ingest-list`."""

from __future__ import annotations

import random

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from esmpipe.cli import main

from .conftest import digest, fake_compute, protein, write_ingest

SAMPLES = 5000


def test_five_thousand_samples_through_ingest_lists(tmp_path, monkeypatch):
    rng = random.Random(3)
    shared = [protein(rng, rng.randint(30, 90)) for _ in range(50)]
    paths, distinct, records = [], set(), 0
    for i in range(SAMPLES):
        own = protein(rng, rng.randint(30, 90))
        rows = [(f"s{i}_1", own, "ok"), (f"s{i}_2", rng.choice(shared), "ok")]
        if i % 1000 == 0:
            rows.append((f"s{i}_3", "", "empty"))
        distinct |= {digest(s) for _, s, st in rows if st == "ok"}
        records += len(rows)
        paths.append(write_ingest(tmp_path / "ingest" / f"s{i}.parquet", f"s{i}", rows))
    listing = tmp_path / "ingest.txt"
    # Relative and absolute paths, a blank line and a comment.
    lines = ["# the cohort", *(str(p) for p in paths[:-1]), "",
             str(paths[-1].relative_to(tmp_path))]
    listing.write_text("\n".join(lines) + "\n")

    monkeypatch.chdir(tmp_path)
    plan_dir, cache = tmp_path / "plan", tmp_path / "cache"
    assert main(["shard", "--stage", "embed", "--ingest-list", str(listing),
                 "--cache-dir", str(cache), "--output-dir", str(plan_dir),
                 "--settings", '{"model": "m"}', "--shard-size", "2000",
                 "--cost-exponent", "1"]) == 0
    shards = sorted((plan_dir / "shards").glob("*.parquet"))
    assert len(shards) > 1
    planned = [h for s in shards for h in pq.read_table(s)["seq_hash"].to_pylist()]
    assert sorted(planned) == sorted(distinct)
    for shard in shards:
        fake_compute("embed", shard, cache / shard.name)
    assert main(["gather", "--table", "embeddings", "--plan", str(plan_dir),
                 "--output", "results/embeddings",
                 "--status-output", "status/embed.parquet"]) == 0
    assert main(["gather", "--table", "proteins", "--ingest-list", str(listing),
                 "--status", "embed=status/embed.parquet",
                 "--output", "results/proteins"]) == 0
    emb = ds.dataset(tmp_path / "results" / "embeddings").to_table(columns=["seq_hash"])
    assert sorted(emb["seq_hash"].to_pylist()) == sorted(distinct)
    prot = ds.dataset(tmp_path / "results" / "proteins").to_table(
        columns=["sample", "status"])
    assert prot.num_rows == records
    assert len(set(prot["sample"].to_pylist())) == SAMPLES
    assert prot["status"].to_pylist().count("empty") == SAMPLES // 1000


def test_a_missing_list_is_a_user_error(tmp_path, capsys):
    code = main(["gather", "--table", "proteins", "--ingest-list", str(tmp_path / "nope.txt"),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert "nope.txt" in capsys.readouterr().err
    assert main(["shard", "--stage", "embed", "--cache-dir", "c", "--output-dir", "o",
                 "--settings", "{}", "--shard-size", "1", "--cost-exponent", "1"]) == 2
