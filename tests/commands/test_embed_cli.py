"""`esmpipe embed` end to end on a tiny random ESM-2 checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from esmpipe.cli import main
from esmpipe.io.sequences import seq_hash
from esmpipe.io.tables import read_metadata
from esmpipe.models import EsmConfig, EsmModel, EsmTokenizer

FASTA = """>a
MKVLLAGG*
>b duplicate of a
mkvllagg
>c
ACDEFGHIKLMNPQRSTVWYXBUZO
>d internal stop
MK*V
>e long
""" + "A" * 60 + "\n"


def _direct(folder: Path, sequence: str) -> np.ndarray:
    model = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
    ids = EsmTokenizer.from_pretrained(folder)(sequence, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0, 1:-1].mean(dim=0).numpy()


def test_embed_fasta(tiny_esm2: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.fa"
    source.write_text(FASTA)
    out = tmp_path / "emb.parquet"
    rc = main(["embed", "--model", str(tiny_esm2), "--input", str(source), "--output", str(out),
               "--device", "cpu", "--max-length", "50", "--max-tokens", "64"])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    hidden = EsmConfig.from_pretrained(tiny_esm2).hidden_size
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), hidden)
    # One row per distinct valid sequence (rows in the order computed); the internal
    # stop is skipped.
    order = [seq_hash(s) for s in ("MKVLLAGG", "ACDEFGHIKLMNPQRSTVWYXBUZO", "A" * 60)]
    rows = sorted(table.to_pylist(), key=lambda r: order.index(r["seq_hash"]))
    assert [r["seq_hash"] for r in rows] == order and table.num_rows == 3
    assert [r["status"] for r in rows] == ["ok", "ok", "too_long"]
    assert [r["length"] for r in rows] == [8, 25, 60]
    assert rows[2]["embedding"] is None
    for row, seq in zip(rows[:2], ["MKVLLAGG", "ACDEFGHIKLMNPQRSTVWYXBUZO"], strict=True):
        np.testing.assert_allclose(row["embedding"], _direct(tiny_esm2, seq), atol=1e-5)
    meta = read_metadata(out)
    for key in ("model", "revision", "dtype", "layer", "pooling", "esmpipe_version",
                "torch_version", "device"):  # fmt: skip
        assert key in meta
    assert meta["dtype"] == "float32" and meta["device"] == "cpu" and meta["layer"] == -1
    assert meta["input_skipped"] == {"internal_stop": 1}


def test_embed_shard_parquet(tiny_esm2: Path, tmp_path: Path) -> None:
    seqs = ["MKV", "GGGAAA", "MKV"]
    shard = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"seq_hash": [seq_hash(s) for s in seqs], "sequence": seqs}), shard)
    out = tmp_path / "emb.parquet"
    rc = main(["embed", "--model", str(tiny_esm2), "--input", str(shard), "--output", str(out),
               "--layer", "1"])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    assert table.num_rows == 2 and table.column("status").to_pylist() == ["ok", "ok"]
    assert read_metadata(out)["layer"] == 1


def test_embed_errors_name_the_problem(
    tiny_esm2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.fa"
    bad.write_text("MKV\n")
    out = tmp_path / "x.parquet"
    assert main(["embed", "--model", str(tiny_esm2), "--input", str(bad), "--output",
                 str(out)]) == 2  # fmt: skip
    assert str(bad) in capsys.readouterr().err
    good = tmp_path / "good.fa"
    good.write_text(">a\nMKV\n")
    missing = tmp_path / "no-model"
    assert main(["embed", "--model", str(missing), "--input", str(good), "--output",
                 str(out)]) == 2  # fmt: skip
    assert str(missing) in capsys.readouterr().err
    assert not out.exists()


def test_killed_job_resumes_from_its_last_finished_batch(
    tiny_esm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esmpipe.engine.embed import Embedder

    source = tmp_path / "in.fa"
    source.write_text("".join(f">s{i}\n{'MKVLAG'[: 1 + i % 6] * (i + 1)}\n" for i in range(12)))
    args = ["embed", "--model", str(tiny_esm2), "--input", str(source), "--device", "cpu",
            "--max-tokens", "40"]  # fmt: skip
    whole = tmp_path / "whole.parquet"
    assert main([*args, "--output", str(whole)]) == 0

    real_forward = Embedder._forward
    computed: list[int] = []

    def forward(self, sequences):
        if len(computed) >= 4:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this point runs
        computed.extend(len(s) for s in sequences)
        return real_forward(self, sequences)

    out = tmp_path / "emb.parquet"
    monkeypatch.setattr(Embedder, "_forward", forward)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--output", str(out)])
    assert not out.exists()
    first_try = len(computed)
    assert 0 < first_try < 12

    computed.clear()
    monkeypatch.setattr(Embedder, "_forward", lambda self, s: computed.extend(map(len, s))
                        or real_forward(self, s))  # fmt: skip
    assert main([*args, "--output", str(out)]) == 0
    assert len(computed) == 12 - first_try  # only what the killed try had not finished
    got = pq.read_table(out).sort_by("seq_hash")
    want = pq.read_table(whole).sort_by("seq_hash")
    assert got["seq_hash"].equals(want["seq_hash"]) and got["status"].equals(want["status"])
    np.testing.assert_allclose(np.array(got["embedding"].to_pylist()),
                               np.array(want["embedding"].to_pylist()), atol=1e-5)  # fmt: skip
    assert read_metadata(out)["status_counts"] == read_metadata(whole)["status_counts"]
