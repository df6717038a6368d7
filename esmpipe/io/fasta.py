"""Reading FASTA files, plain or gzip-compressed.

Compression is recognised by the gzip magic bytes (1f 8b), not by the file
name, so `proteins.fa` that is really gzip and `proteins.fa.gz` that is really
plain text both read. The reader is strict about structure and lenient about
content: it refuses what is not FASTA (text before the first header, a header
without an identifier, binary data, a truncated gzip stream) with a message
that names the file, the record and what to do, but it passes residues through
untouched; judging them is `esmpipe.io.sequences.normalise_sequence`'s job.
A record with no sequence lines is valid here (ingest reports it as "empty").

Real-world mess it reads: Windows (CRLF) and old Mac (CR only) line ends, a
UTF-8 byte-order mark, multi-member gzip (`cat a.gz b.gz`, bgzip), blank lines
and trailing spaces; lowercase residues and '*' stops pass through to
normalisation. What it refuses, each with the remedy: other compressions
(bzip2, xz, zstd, zip), UTF-16 text (a Windows "Unicode" save), binary data, a
'>' without an identifier. Duplicate ids are not its business (ingest renames
them).

Record fields:
- `id`: the header's first whitespace-separated word (what Prodigal, BLAST and
  Biopython call the id);
- `description`: the whole header line without '>' (Biopython's convention);
- `sequence`: the sequence lines joined, line ends removed, otherwise raw.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"

# Leading bytes of what a FASTA input often turns out to be, and what to do about it.
_OTHER_FORMATS = (
    (b"BZh", "bzip2-compressed", "decompress it (bunzip2) or recompress it with gzip"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (unxz) or recompress it with gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd) or recompress it with gzip"),
    (b"PK\x03\x04", "a zip archive", "unzip it and give the FASTA file inside"),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8 or ASCII text"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8 or ASCII text"),
)

# Control characters other than tab, CR and LF never occur in FASTA text; finding one
# means the file is binary (a BAM, an image, a compressed format other than gzip, ...).
_CONTROL_BYTES = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"


class FastaError(ValueError):
    """A FASTA file that cannot be read; the message names file, record and remedy."""


@dataclass(frozen=True, slots=True)
class FastaRecord:
    id: str
    description: str
    sequence: str


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        compressed = is_gzip(path)
    except FileNotFoundError:
        raise FastaError(f"{path}: no such file; check the input path") from None
    except IsADirectoryError:
        raise FastaError(f"{path}: is a directory, expected a FASTA file") from None
    except PermissionError:
        raise FastaError(f"{path}: permission denied") from None
    return gzip.open(path, "rb") if compressed else open(path, "rb")  # type: ignore[return-value]


def _split_cr(handle: BinaryIO) -> Iterator[bytes]:
    """Lines split at LF and also at a CR alone, for files with old Mac line ends."""
    for raw in handle:
        body = raw.rstrip(b"\r\n")
        if b"\r" in body:
            yield from body.split(b"\r")
        else:
            yield raw


def _lines(handle: BinaryIO) -> Iterator[bytes]:
    """The handle's lines; split at a CR alone too when the file starts with such line ends.

    Deciding once from the first block keeps per-line work off the common path; a
    lone CR later in a file is caught per record (`_MIXED_LINE_ENDS`)."""
    first = handle.peek(1 << 16)[: 1 << 16].removesuffix(b"\r")  # type: ignore[attr-defined]
    lone_cr = first.replace(b"\r\n", b"").find(b"\r") >= 0
    return _split_cr(handle) if lone_cr else iter(handle)


def _check_format(path: str | os.PathLike[str], first: bytes) -> None:
    for magic, what, remedy in _OTHER_FORMATS:
        if first.startswith(magic):
            raise FastaError(f"{path}: is {what}, not FASTA text; {remedy}")


def _guess_format(line: str) -> str:
    """A hint naming the format a file that does not start with '>' seems to be in."""
    if line.startswith("@"):
        return " (this looks like FASTQ reads: give assembled contigs or proteins as FASTA)"
    if line.startswith(("LOCUS", "ID ")):
        return " (this looks like GenBank/EMBL: convert it to FASTA)"
    return ""


def _where(record_number: int, record_id: str | None) -> str:
    if record_id is None:
        return "before the first record"
    return f"in record {record_number} ({record_id!r})"


def _binary_or_undecodable(raw: bytes) -> str | None:
    """Why `raw` is not FASTA text, or None when it is."""
    if raw.translate(None, _CONTROL_BYTES) != raw:
        return "contains binary data"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None


_MIXED_LINE_ENDS = (
    "ends a line with a CR alone while the file's first lines end otherwise (mixed line "
    "ends); convert them, e.g. `tr '\\r' '\\n'` or dos2unix -c mac"
)


def _not_fasta(path: str | os.PathLike[str], line: int, where: str, why: str) -> FastaError:
    if why == _MIXED_LINE_ENDS:
        return FastaError(f"{path}: line {line} {where} {why}")
    return FastaError(
        f"{path}: line {line} {where} {why}; this is not a FASTA file (plain text or gzip "
        "expected)"
    )


def _sequence(path: str | os.PathLike[str], chunks: list[bytes], first_line: int,
              where: str) -> str:  # fmt: skip
    """A record's sequence lines (bytes, stripped) checked and decoded in one go."""
    data = b"".join(chunks)
    if data.translate(None, _CONTROL_BYTES) == data and b"\r" not in data:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    for offset, chunk in enumerate(chunks):
        why = _MIXED_LINE_ENDS if b"\r" in chunk else _binary_or_undecodable(chunk)
        if why:
            raise _not_fasta(path, first_line + offset, where, why)
    raise AssertionError("unreachable: the joined lines failed but no line does")


def read_fasta(path: str | os.PathLike[str]) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file in file order.

    Raises `FastaError` for text before the first header, a header without an
    identifier, binary content, undecodable text, mixed line ends and truncated or
    corrupt gzip.
    """
    record_number = 0  # 1-based number of the record being read
    record_id: str | None = None
    description = ""
    # A record's sequence lines stay bytes until the record ends, then are checked and
    # decoded in one go: per-line work is what limits the reading speed.
    chunks: list[bytes] = []
    first_line = 0  # line number of chunks[0]
    line_number = 0
    with _open(path) as handle:
        try:
            lines = _lines(handle)
            first = next(lines, None)
            if first is not None:
                _check_format(path, first)
                lines = itertools.chain([first.removeprefix(UTF8_BOM)], lines)
            for raw in lines:
                line_number += 1
                if record_id is not None and not raw.startswith(b">"):
                    chunks.append(raw.strip())
                    continue
                where = _where(record_number, record_id)
                why = _binary_or_undecodable(raw)
                if why:
                    raise _not_fasta(path, line_number, where, why)
                line = raw.decode("utf-8").rstrip("\r\n")
                if "\r" in line:
                    raise _not_fasta(path, line_number, where, _MIXED_LINE_ENDS)
                if line.startswith(">"):
                    if record_id is not None:
                        yield FastaRecord(record_id, description,
                                          _sequence(path, chunks, first_line, where))  # fmt: skip
                    record_number += 1
                    description = line[1:].strip()
                    if not description:
                        raise FastaError(
                            f"{path}: line {line_number}: record {record_number} has an empty "
                            "header; give every record an identifier after '>'"
                        )
                    record_id = description.split(maxsplit=1)[0]
                    chunks = []
                    first_line = line_number + 1
                elif line.strip():
                    raise FastaError(
                        f"{path}: line {line_number}: sequence data before the first header; "
                        "a FASTA file must start with a '>' line" + _guess_format(line)
                    )
            if record_id is not None:
                final = _sequence(path, chunks, first_line, _where(record_number, record_id))
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise FastaError(
                f"{path}: the gzip stream is truncated or corrupt after line {line_number} "
                f"{_where(record_number, record_id)} ({err}); re-download or re-compress the file"
            ) from None
    if record_id is not None:
        yield FastaRecord(record_id, description, final)
