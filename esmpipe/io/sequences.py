"""Protein sequence normalisation and the cohort-wide sequence key `seq_hash`.

The rule, applied in this order by `normalise_sequence`:

1. remove all whitespace (line breaks, spaces, tabs) and upper-case;
2. remove ONE trailing '*' (the stop codon that Prodigal and many translation
   tools write); a second '*' at the end is an internal stop;
3. judge what is left; the first matching status wins:
   - "empty": nothing left (an empty record, or just "*");
   - "invalid_characters": a character other than A-Z, '*', '-' and '.'
     (digits, '?', '+', non-ASCII letters, ...);
   - "gapped": alignment gap characters '-' or '.'. NOTE: gaps are reported,
     not silently removed: an aligned FASTA was almost certainly not meant as
     the input of a screen, and removing gaps would hide that;
   - "internal_stop": a '*' anywhere but the (removed) end;
   - "ok" otherwise.

All 26 letters are kept, including the ambiguous and rare codes B Z J U O X.
ESM-2's vocabulary has X B U Z O, so those embed as themselves; J (Leu/Ile) is
not in it and the ESM-2 tokenizer maps it to <unk>, as the reference tokenizer
does. ESMFold knows only the 20 standard residues and folds every other letter
(X B Z J U O) as unknown (index 20), as the reference `infer` does.

Records of the wrong kind (`looks_like_nucleotide`, `classify_contig`): a
sample sheet may declare a nucleotide file as `protein` or a protein file as
`contigs`. Both would run silently (DNA folded as a protein of A, C, G and T;
no gene called on a protein), so ingest checks every record against the
sample's declared type; the rules and their error rates are in the docstrings.

`seq_hash` is the SHA-256 of the ASCII normalised sequence, as 64 lowercase hex
digits; `printf %s SEQUENCE | sha256sum` gives the same value. Only sequences
with status "ok" get a hash (and are embedded or folded).
"""

from __future__ import annotations

import hashlib
import re

from esmpipe.status import (
    EMPTY,
    GAPPED,
    INTERNAL_STOP,
    INVALID_CHARACTERS,
    OK,
    PROTEIN_IN_CONTIGS,
)

_WHITESPACE = re.compile(r"\s+")
_INVALID = re.compile(r"[^A-Z*.\-]")
_GAPS = re.compile(r"[.\-]")

# IUPAC nucleotide codes: A C G T U, the two- and three-base ambiguity codes, N.
_NOT_IUPAC_NUCLEOTIDE = re.compile(r"[^ACGTURYKMSWBDHVN]")

# `looks_like_nucleotide`: the shortest record judged, and the share of A C G T U N.
NUCLEOTIDE_MIN_LENGTH = 20
NUCLEOTIDE_MIN_FRACTION = 0.9
# `classify_contig`: below this share of A C G T U N a contig record is a protein.
CONTIG_MIN_NUCLEOTIDE_FRACTION = 0.5


def normalise_sequence(raw: str) -> tuple[str, str]:
    """Return (normalised sequence, status); see the module docstring for the rule.

    The normalised sequence is returned whatever the status, so that a table can
    show what was rejected; only an "ok" sequence is a valid protein.
    """
    sequence = _WHITESPACE.sub("", raw)
    # Checked before upper-casing: str.upper maps some non-ASCII letters to ASCII ones
    # ('ß' -> 'SS'), which would turn garbage into a plausible protein.
    is_ascii = sequence.isascii()
    sequence = sequence.upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    if not sequence:
        return sequence, EMPTY
    if not is_ascii or _INVALID.search(sequence):
        return sequence, INVALID_CHARACTERS
    if _GAPS.search(sequence):
        return sequence, GAPPED
    if "*" in sequence:
        return sequence, INTERNAL_STOP
    return sequence, OK


def seq_hash(normalised: str) -> str:
    """SHA-256 hex digest (64 characters, 256 bits) of the normalised sequence."""
    return hashlib.sha256(normalised.encode("ascii")).hexdigest()


def nucleotide_fraction(sequence: str) -> float:
    """Share of A, C, G, T, U and N among the letters of an ASCII sequence of upper-case
    letters, '*', '-' and '.' (0 if it has no letter)."""
    # bytes.translate deletes in one C pass; a per-character Python loop would
    # dominate ingest's time.
    data = sequence.encode("ascii")
    letters = len(data.translate(None, b"*-."))
    if not letters:
        return 0.0
    return 1.0 - len(data.translate(None, b"ACGTUN*-.")) / letters


def looks_like_nucleotide(sequence: str) -> bool:
    """Whether a normalised protein-sample sequence is really DNA or RNA.

    The rule: at least `NUCLEOTIDE_MIN_LENGTH` (20) residues, at least
    `NUCLEOTIDE_MIN_FRACTION` (90%) of them A, C, G, T, U or N, and each of the
    four bases present (A, C, G, and T or U).

    Why it does not call real proteins DNA: A, C, G, T and N are alanine,
    cysteine, glycine, threonine and asparagine, together about a quarter of
    the residues of a typical protein (cysteine, the rarest residue, about
    1.5%). For a protein of 20 residues with that composition, 18 or more of
    them from those five is a chance of a few in a billion, and it falls
    steeply with length. The proteins that do come close are low-complexity
    ones (glycine-rich, alanine-rich, poly-asparagine stretches), and those are
    the reason for the last condition: they lack at least one of the four
    bases (above all cysteine), while DNA or RNA of 20 or more bases almost
    always has all four. The 10% tolerance leaves room for IUPAC ambiguity
    codes (R, Y, K, ...) in real nucleotide sequences.

    What it misses, by design: nucleotide records shorter than 20 (primers,
    adapters), which could equally be peptides, and low-complexity DNA without
    one of the bases; those stay "ok" and are computed as proteins.
    """
    if len(sequence) < NUCLEOTIDE_MIN_LENGTH or not sequence.isascii():
        return False
    if nucleotide_fraction(sequence) < NUCLEOTIDE_MIN_FRACTION:
        return False
    present = set(sequence)
    return {"A", "C", "G"} <= present and bool({"T", "U"} & present)


def classify_contig(raw: str) -> tuple[str, str]:
    """Return (contig sequence, status) for a record of a contigs sample.

    The sequence is the record's with whitespace removed and upper-cased. The
    status is "ok" when the record is a contig to call genes on (the caller
    turns it into "no_genes" when none is found); otherwise, the first that
    applies:

    - "empty": no sequence;
    - "invalid_characters": a character other than ASCII letters, '*', '-'
      and '.' (digits, '?', non-ASCII letters, ...);
    - "protein_in_contigs": under half of the letters are A, C, G, T, U or N.
      Real contigs are nearly all A, C, G, T (and N in scaffold gaps); proteins
      have about a quarter of those letters, and a stretch of a protein with
      over half is rare and short. Stops ('*') and gaps do not change this.
    - "gapped": alignment gap characters '-' or '.', as for proteins;
    - "invalid_characters": a letter that is no IUPAC nucleotide code
      (E F I J L O P Q X Z) or a '*' in a mostly-nucleotide record: a
      corrupted contig, not a protein; no gene is called on it rather than
      calling genes across a character Prodigal would read as a gap.

    IUPAC ambiguity codes (R Y K M S W B D H V) and N are valid: Prodigal
    reads them as gaps it does not call genes across.
    """
    sequence = _WHITESPACE.sub("", raw)
    is_ascii = sequence.isascii()
    sequence = sequence.upper()
    if not sequence:
        return sequence, EMPTY
    if not is_ascii or _INVALID.search(sequence):
        return sequence, INVALID_CHARACTERS
    if nucleotide_fraction(sequence) < CONTIG_MIN_NUCLEOTIDE_FRACTION:
        return sequence, PROTEIN_IN_CONTIGS
    if _GAPS.search(sequence):
        return sequence, GAPPED
    if _NOT_IUPAC_NUCLEOTIDE.search(sequence):
        return sequence, INVALID_CHARACTERS
    return sequence, OK
