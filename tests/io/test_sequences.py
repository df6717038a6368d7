"""Sequence normalisation statuses and the sequence hash."""

from __future__ import annotations

import hashlib

import pytest

from esmpipe.io.sequences import (
    classify_contig,
    looks_like_nucleotide,
    normalise_sequence,
    seq_hash,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MKV", ("MKV", "ok")),
        (" mk v\nLL\t", ("MKVLL", "ok")),
        ("MKV*", ("MKV", "ok")),  # Prodigal's stop
        ("MKV**", ("MKV*", "internal_stop")),
        ("MK*V", ("MK*V", "internal_stop")),
        ("", ("", "empty")),
        ("*", ("", "empty")),
        ("  \n", ("", "empty")),
        ("MK1V", ("MK1V", "invalid_characters")),
        ("MK?V", ("MK?V", "invalid_characters")),
        ("MKßV", ("MKSSV", "invalid_characters")),  # non-ASCII never becomes valid
        ("MK-V", ("MK-V", "gapped")),
        ("MK.V", ("MK.V", "gapped")),
        ("BZJUOX", ("BZJUOX", "ok")),  # ambiguous and rare codes are kept
    ],
)
def test_normalise(raw: str, expected: tuple[str, str]) -> None:
    assert normalise_sequence(raw) == expected


def test_seq_hash_is_sha256_of_normalised() -> None:
    normalised, _ = normalise_sequence("mkv*\n")
    assert seq_hash(normalised) == hashlib.sha256(b"MKV").hexdigest()
    assert len(seq_hash("MKV")) == 64
    assert seq_hash("MKV") != seq_hash("MKVL")


# A real protein (E. coli thioredoxin, mature, 108 aa) and a stretch of coding-like DNA.
TRX = ("SDKIIHLTDDSFDTDVLKADGAILVDFWAEWCGPCKMIAPILDEIADEYQGKLTVAKLNIDQNPGTAPKYGIRGIPTLLLFKNG"
       "EVAASKVGALSKGQLKEFLDANLA")
TRX_DNA = "ATGAGCGATAAAATTATTCACCTGACTGACGACAGTTTTGACACGGATGTACTCAAAGCGGACGGGGCGATCCTCGTC"


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (TRX_DNA, True),
        (TRX_DNA.replace("T", "U"), True),  # RNA
        (TRX_DNA[:20], True),  # the shortest judged
        (TRX_DNA[:19], False),  # shorter: could be a peptide
        (TRX_DNA[:40] + "RYKMSWN" + TRX_DNA[40:], True),  # ambiguity codes are tolerated
        (TRX, False),
        ("G" * 60, False),  # poly-glycine: one base only
        ("GGAGGAGGCGG" * 5, False),  # glycine-rich, no T: a protein
        ("N" * 60, False),  # poly-asparagine
        ("ACGT" * 4 + "EFILPQ" * 2, False),  # too few A C G T U N
        ("ACGTACGTAC" * 3 + "EEEE", False),  # 30 of 34 = 88%, under 90%
        ("ACGTACGTAC" * 4 + "EEEE", True),  # 40 of 44 = 91%
    ],
)
def test_looks_like_nucleotide(sequence: str, expected: bool) -> None:
    assert looks_like_nucleotide(sequence) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acgt\nACGTN", ("ACGTACGTN", "ok")),
        ("ACGTACGTRYKMSWBDHVNACGTACGT", ("ACGTACGTRYKMSWBDHVNACGTACGT", "ok")),  # IUPAC codes
        ("RYKMSWBDHV", ("RYKMSWBDHV", "protein_in_contigs")),  # no base: a protein's letters
        ("", ("", "empty")),
        (" \n", ("", "empty")),
        (TRX, (TRX, "protein_in_contigs")),
        (TRX + "*", (TRX + "*", "protein_in_contigs")),
        ("MKV", ("MKV", "protein_in_contigs")),  # IUPAC letters, but no base among them
        ("MK-V--LLA", ("MK-V--LLA", "protein_in_contigs")),  # an aligned protein
        ("ACGT-ACGT", ("ACGT-ACGT", "gapped")),
        ("ACGTACGTLACGT", ("ACGTACGTLACGT", "invalid_characters")),  # a corrupted contig
        ("ACGTACGT*", ("ACGTACGT*", "invalid_characters")),
        ("ACGT1ACGT", ("ACGT1ACGT", "invalid_characters")),
        ("ACGTßACGT", ("ACGTSSACGT", "invalid_characters")),
    ],
)
def test_classify_contig(raw: str, expected: tuple[str, str]) -> None:
    assert classify_contig(raw) == expected
