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
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["layer"] == 2 and meta["layers"] == [2]  # -1 resolved: the last of 2 layers
    assert table.column("windowed").to_pylist() == [False] * 3
    assert table.schema.names == ["seq_hash", "length", "status", "embedding", "windowed"]
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

    def forward(self, pieces):
        if len(computed) >= 4:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this point runs
        computed.extend(p.length for p in pieces)
        return real_forward(self, pieces)

    out = tmp_path / "emb.parquet"
    monkeypatch.setattr(Embedder, "_forward", forward)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--output", str(out)])
    assert not out.exists()
    first_try = len(computed)
    assert 0 < first_try < 12

    computed.clear()
    monkeypatch.setattr(Embedder, "_forward", lambda self, p: computed.extend(x.length for x in p)
                        or real_forward(self, p))  # fmt: skip
    assert main([*args, "--output", str(out)]) == 0
    assert len(computed) == 12 - first_try  # only what the killed try had not finished
    got = pq.read_table(out).sort_by("seq_hash")
    want = pq.read_table(whole).sort_by("seq_hash")
    assert got["seq_hash"].equals(want["seq_hash"]) and got["status"].equals(want["status"])
    np.testing.assert_allclose(np.array(got["embedding"].to_pylist()),
                               np.array(want["embedding"].to_pylist()), atol=1e-5)  # fmt: skip
    assert read_metadata(out)["status_counts"] == read_metadata(whole)["status_counts"]


def test_embed_every_output(tiny_esm2: Path, tmp_path: Path) -> None:
    """--layers, --include, --lm-score and a windowed sequence: the columns of the
    contract, equal to the engine's values, per-residue stored compactly as float16."""
    from esmpipe.engine.embed import Embedder
    from esmpipe.models import EsmForMaskedLM

    sequences = ["MKVLLAGG", "ACDEFGHIKLMNPQRSTVWY", "MKVW" * 9]
    source = tmp_path / "in.fa"
    source.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    out = tmp_path / "emb.parquet"
    rc = main(["embed", "--model", str(tiny_esm2), "--input", str(source), "--output", str(out),
               "--device", "cpu", "--layers", "-1,0", "--include", "mean,bos,per_residue",
               "--lm-score", "pseudo"])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    hidden = EsmConfig.from_pretrained(tiny_esm2).hidden_size
    assert table.schema.names == ["seq_hash", "length", "status", "embedding", "bos",
                                  "per_residue", "layer_0", "mean_log_prob",
                                  "pseudo_perplexity", "windowed"]  # fmt: skip
    assert table.schema.field("per_residue").type == pa.list_(pa.list_(pa.float16(), hidden))
    assert table.schema.field("layer_0").type == pa.list_(pa.float32(), hidden)
    assert table.schema.field("pseudo_perplexity").type == pa.float32()
    rows = {r["seq_hash"]: r for r in table.to_pylist()}
    model = EsmForMaskedLM.from_pretrained(tiny_esm2).eval()
    want = Embedder(model, EsmTokenizer.from_pretrained(tiny_esm2), layers=[-1, 0],
                    include=["bos", "per_residue"], lm_score="pseudo").embed(sequences)  # fmt: skip
    for seq, expected in zip(sequences, want, strict=True):
        row = rows[seq_hash(seq)]
        assert row["status"] == "ok" and row["windowed"] is False
        np.testing.assert_allclose(row["embedding"], expected.embedding, atol=1e-6)
        np.testing.assert_allclose(row["bos"], expected.bos, atol=1e-6)
        np.testing.assert_allclose(row["layer_0"], expected.layers[0], atol=1e-6)
        np.testing.assert_array_equal(np.array(row["per_residue"], dtype=np.float16),
                                      expected.per_residue)  # fmt: skip
        assert row["mean_log_prob"] == pytest.approx(expected.mean_log_prob, rel=1e-6)
        assert row["pseudo_perplexity"] == pytest.approx(expected.pseudo_perplexity, rel=1e-6)
    meta = read_metadata(out)
    assert meta["layers"] == [2, 0] and meta["lm_score"] == "pseudo" and meta["window"] == 1022
    assert meta["include"] == ["bos", "mean", "per_residue"]


def test_long_sequences_are_windowed(tiny_esm2: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.fa"
    source.write_text(">long\n" + "MKV" * 350 + "\n>short\nMKV\n")  # 1,050 > 1,022 residues
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--model", str(tiny_esm2), "--input", str(source), "--output",
                 str(out), "--include", "per_residue", "--device", "cpu"]) == 0  # fmt: skip
    rows = {r["length"]: r for r in pq.read_table(out).to_pylist()}
    assert rows[1050]["status"] == "ok" and rows[1050]["windowed"] is True
    assert rows[3]["windowed"] is False
    matrix = np.array(rows[1050]["per_residue"], dtype=np.float32)
    assert matrix.shape == (1050, 32) and np.isfinite(matrix).all()
    assert np.isfinite(rows[1050]["embedding"]).all()
    out2 = tmp_path / "limited.parquet"
    assert main(["embed", "--model", str(tiny_esm2), "--input", str(source), "--output",
                 str(out2), "--max-length", "1000"]) == 0  # fmt: skip
    rows = {r["length"]: r for r in pq.read_table(out2).to_pylist()}
    assert rows[1050]["status"] == "too_long" and rows[1050]["embedding"] is None


def test_layer_alias_and_bad_options(tiny_esm2: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    source = tmp_path / "in.fa"
    source.write_text(">a\nMKVLLAGG\n")
    base = ["embed", "--model", str(tiny_esm2), "--input", str(source), "--device", "cpu"]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert main([*base, "--output", str(a), "--layer", "1"]) == 0
    assert main([*base, "--output", str(b), "--layers", "-2"]) == 0
    assert pq.read_table(a)["embedding"].equals(pq.read_table(b)["embedding"])
    assert main([*base, "--output", str(a), "--layers", "3"]) == 2
    assert "--layers 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--output", str(a), "--include", "mean,cls"])
