"""FASTA reading: plain and gzip by magic bytes, and errors that name file and record."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest

from esmpipe.io.fasta import FastaError, FastaRecord, read_fasta

TEXT = ">p1 first protein\nMKV\nLLA\n\n>p2\n\n>p3 third\r\nmkv*\r\n"
EXPECTED = [
    FastaRecord("p1", "p1 first protein", "MKVLLA"),
    FastaRecord("p2", "p2", ""),
    FastaRecord("p3", "p3 third", "mkv*"),
]


def test_plain(tmp_path: Path) -> None:
    path = tmp_path / "a.fa"
    path.write_text(TEXT)
    assert list(read_fasta(path)) == EXPECTED


def test_gzip_recognised_by_magic_not_name(tmp_path: Path) -> None:
    disguised = tmp_path / "looks_plain.fa"
    disguised.write_bytes(gzip.compress(TEXT.encode()))
    plain_named_gz = tmp_path / "really_plain.fa.gz"
    plain_named_gz.write_text(TEXT)
    assert list(read_fasta(disguised)) == EXPECTED
    assert list(read_fasta(plain_named_gz)) == EXPECTED


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.fa"
    path.write_text("")
    assert list(read_fasta(path)) == []


def _error(path: Path) -> str:
    with pytest.raises(FastaError) as info:
        list(read_fasta(path))
    return str(info.value)


def test_sequence_before_header(tmp_path: Path) -> None:
    path = tmp_path / "noheader.fa"
    path.write_text("\nMKV\n>p1\nMKV\n")
    message = _error(path)
    assert str(path) in message and "line 2" in message and "before the first header" in message


def test_empty_header_names_record_and_line(tmp_path: Path) -> None:
    path = tmp_path / "emptyheader.fa"
    path.write_text(">p1\nMKV\n>  \nMKV\n")
    message = _error(path)
    assert str(path) in message and "record 2" in message and "line 3" in message


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "binary.fa"
    path.write_bytes(b">p1\nMKV\n>p2\nMK\x00\x01\x02V\n")
    message = _error(path)
    assert str(path) in message and "'p2'" in message and "record 2" in message
    assert "binary" in message


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.fa"
    path.write_bytes(b">p1 caf\xe9\nMKV\n")
    message = _error(path)
    assert str(path) in message and "UTF-8" in message


def test_truncated_gzip(tmp_path: Path) -> None:
    records = "".join(f">p{i}\n{'MKVLLA' * 20}\n" for i in range(2000))
    data = gzip.compress(records.encode())
    path = tmp_path / "truncated.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    message = _error(path)
    assert str(path) in message and "truncated or corrupt" in message and "record" in message


def test_missing_file(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.fa")
    assert "nope.fa" in message and "no such file" in message


def test_line_ends_of_every_system(tmp_path: Path) -> None:
    unix = ">p1 a\nMKV\nLLA\n>p2\nmkv*\n"
    for name, text in (("crlf", unix.replace("\n", "\r\n")), ("cr", unix.replace("\n", "\r")),
                       ("mixed", ">p1 a\r\nMKV\rLLA\n>p2\r\nmkv*")):  # fmt: skip
        path = tmp_path / f"{name}.fa"
        path.write_bytes(text.encode())
        assert list(read_fasta(path)) == [
            FastaRecord("p1", "p1 a", "MKVLLA"),
            FastaRecord("p2", "p2", "mkv*"),
        ], name


def test_utf8_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.fa"
    path.write_bytes(b"\xef\xbb\xbf>p1\r\nMKV\r\n")
    assert list(read_fasta(path)) == [FastaRecord("p1", "p1", "MKV")]
    gz = tmp_path / "bom.fa.gz"
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbf>p1\nMKV\n"))
    assert list(read_fasta(gz)) == [FastaRecord("p1", "p1", "MKV")]


def test_multi_member_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cat.fa.gz"
    path.write_bytes(gzip.compress(b">p1\nMKV\n") + gzip.compress(b">p2\nLLA\n"))
    assert [r.id for r in read_fasta(path)] == ["p1", "p2"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bz2.compress(b">p1\nMKV\n"), "bzip2"),
        (lzma.compress(b">p1\nMKV\n"), "xz"),
        (b"\x28\xb5\x2f\xfd\x24\x00\x00\x00", "zstd"),
        (b"PK\x03\x04\x14\x00\x00\x00", "zip"),
        (">p1\nMKV\n".encode("utf-16"), "UTF-16"),
        (">p1\nMKV\n".encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16"),
    ],
)
def test_other_formats_are_named(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "input.fa"
    path.write_bytes(data)
    message = _error(path)
    assert str(path) in message and expected in message and "not FASTA" in message


def test_residues_pass_through_untouched(tmp_path: Path) -> None:
    # Lowercase, stops, gaps and odd letters are normalisation's to judge, not the reader's.
    path = tmp_path / "raw.fa"
    path.write_text(">p1\nmkv* \n>p2\nMK-V.X*J\n")
    assert [r.sequence for r in read_fasta(path)] == ["mkv*", "MK-V.X*J"]


def test_header_with_only_spaces_after_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "space.fa"
    path.write_text(">  p1 desc\nMKV\n")
    assert list(read_fasta(path)) == [FastaRecord("p1", "p1 desc", "MKV")]


@pytest.mark.parametrize(
    ("text", "hint"),
    [("@read1\nACGT\n+\nIIII\n", "FASTQ"), ("LOCUS       NC_000913\n", "GenBank")],
)
def test_other_text_formats_get_a_hint(tmp_path: Path, text: str, hint: str) -> None:
    path = tmp_path / "reads.fa"
    path.write_text(text)
    message = _error(path)
    assert str(path) in message and "before the first header" in message and hint in message


def test_a_lone_cr_after_the_first_block_is_an_error_not_a_merge(tmp_path: Path) -> None:
    body = "".join(f">p{i}\n{'MKVLLA' * 10}\n" for i in range(2000))  # > 64 KiB of LF lines
    for tail, line in (("MKV\rLLA\n", 4002), (">late\r>merged\nMKV\n", 4001)):
        path = tmp_path / "mixed.fa"
        path.write_text(body + ">q\n" + tail if tail.startswith("M") else body + tail)
        message = _error(path)
        assert str(path) in message and "mixed line ends" in message
        assert f"line {line}" in message
