"""`esmpipe ingest` on real-world FASTA mess: every record kept, or an error naming it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.io.tables import read_metadata


def _ingest(tmp_path: Path, source: Path) -> tuple[int, Path]:
    out = tmp_path / "S.parquet"
    rc = main(["ingest", "--sample", "S", "--type", "protein", "--input", str(source),
               "--output", str(out)])  # fmt: skip
    return rc, out


def test_windows_file_gzip_lowercase_and_stops(tmp_path: Path) -> None:
    text = "\ufeff>p1 from Windows\r\nmkvlla\r\nGHE*\r\n>p2\r\nMKV*\r\n>p1 again\r\nmkvllaghe\r\n"
    source = tmp_path / "windows.faa.gz"
    source.write_bytes(gzip.compress(text.encode("utf-8")))
    rc, out = _ingest(tmp_path, source)
    assert rc == 0
    rows = pq.read_table(out).to_pylist()
    assert [(r["protein_id"], r["sequence"], r["status"]) for r in rows] == [
        ("p1", "MKVLLAGHE", "ok"), ("p2", "MKV", "ok"), ("p1.dup2", "MKVLLAGHE", "ok"),
    ]  # fmt: skip
    assert rows[0]["seq_hash"] == rows[2]["seq_hash"]


def test_renamed_ids_never_collide_with_real_ones(tmp_path: Path) -> None:
    source = tmp_path / "ids.faa"
    source.write_text(">p1\nMKV\n>p1.dup2\nMKV\n>p1\nMKV\n>p1\nMKV\n>p1.dup2\nMKV\n")
    rc, out = _ingest(tmp_path, source)
    assert rc == 0
    ids = [r["protein_id"] for r in pq.read_table(out).to_pylist()]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert ids[:2] == ["p1", "p1.dup2"] and all(i.startswith("p1") for i in ids)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b">p1\nMKV\n>\nMKV\n", "record 2 has an empty header"),
        (b"\xef\xbb\xbfMKV\n>p1\nMKV\n", "before the first header"),
        (b"\x28\xb5\x2f\xfd\x24\x00\x00\x00", "zstd-compressed"),
    ],
)
def test_unreadable_files_name_the_file_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture, data: bytes, expected: str
) -> None:
    source = tmp_path / "mess.faa"
    source.write_bytes(data)
    rc, out = _ingest(tmp_path, source)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert str(source) in err and expected in err


def test_samples_stream_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import esmpipe.commands.ingest as ingest

    monkeypatch.setattr(ingest, "BATCH_ROWS", 2)
    source = tmp_path / "five.faa"
    source.write_text("".join(f">p{i}\n{'MKVLLA'[: i + 1]}\n" for i in range(5)))
    rc, out = _ingest(tmp_path, source)
    assert rc == 0
    assert pq.ParquetFile(out).num_row_groups == 3
    rows = pq.read_table(out).to_pylist()
    assert [r["sequence"] for r in rows] == ["M", "MK", "MKV", "MKVL", "MKVLL"]
    assert read_metadata(out)["status_counts"] == {"ok": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.parquet", "five.faa"]


def test_a_failed_ingest_leaves_no_files(tmp_path: Path) -> None:
    source = tmp_path / "dna.faa"
    source.write_text(">g1\n" + "ACGTTGCAAGCT" * 5 + "\n")
    rc, out = _ingest(tmp_path, source)
    assert rc == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dna.faa"]
