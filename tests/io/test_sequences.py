"""Sequence normalisation statuses and the sequence hash."""

from __future__ import annotations

import hashlib

import pytest

from esmpipe.io.sequences import normalise_sequence, seq_hash


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
