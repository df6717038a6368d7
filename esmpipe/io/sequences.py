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

`seq_hash` is the SHA-256 of the ASCII normalised sequence, as 64 lowercase hex
digits; `printf %s SEQUENCE | sha256sum` gives the same value. Only sequences
with status "ok" get a hash (and are embedded or folded).
"""

from __future__ import annotations

import hashlib
import re

from esmpipe.status import EMPTY, GAPPED, INTERNAL_STOP, INVALID_CHARACTERS, OK

_WHITESPACE = re.compile(r"\s+")
_INVALID = re.compile(r"[^A-Z*.\-]")
_GAPS = re.compile(r"[.\-]")


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
