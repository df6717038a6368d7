"""The status vocabulary: every value a `status` column of esmpipe's tables can hold.

One module owns these names so that the ingest step, the engines, the planner,
the gatherer and the report agree on them; compare against the constants, never
against string literals.

A record's journey and where each status is given:

- ingest (`esmpipe.io.sequences.normalise_sequence`): `ok`, or why the record
  is not a protein to compute (`empty`, `invalid_characters`, `gapped`,
  `internal_stop`); a protein-sample record that is DNA/RNA gets
  `nucleotide_sequence` (`esmpipe.io.sequences.looks_like_nucleotide`);
- ingest of a contigs sample, one row per input record in the contigs table
  (`esmpipe.io.sequences.classify_contig`): `ok` (at least one gene called),
  `no_genes`, `protein_in_contigs` (the record is a protein), `empty`,
  `invalid_characters`, `gapped`;
- an engine (`esmpipe embed`, `esmpipe fold`), per distinct sequence: `ok`,
  `too_long` (over the length limit), `out_of_memory` (did not fit even alone
  with every memory fallback), `non_finite` (the model produced NaN or inf);
- the workflow: `not_computed` for a sequence whose shard failed after all its
  retries (the partial tables of a run with failures);
- the proteins table: the ingest status when it is not `ok`, else the first
  stage's failure as `<status>_for_<stage>` (`too_long_for_fold`, ...), else `ok`.
"""

from __future__ import annotations

OK = "ok"

# Normalisation at ingest (see esmpipe.io.sequences for the rule).
EMPTY = "empty"
INVALID_CHARACTERS = "invalid_characters"
GAPPED = "gapped"
INTERNAL_STOP = "internal_stop"
NUCLEOTIDE_SEQUENCE = "nucleotide_sequence"  # a protein-sample record that is DNA/RNA
INGEST_STATUSES = (OK, EMPTY, INVALID_CHARACTERS, GAPPED, INTERNAL_STOP, NUCLEOTIDE_SEQUENCE)

# The contigs table (contig samples), one row per input record.
NO_GENES = "no_genes"  # a valid contig on which the gene caller found no gene
PROTEIN_IN_CONTIGS = "protein_in_contigs"  # a contigs-sample record that is a protein
CONTIG_STATUSES = (OK, NO_GENES, PROTEIN_IN_CONTIGS, EMPTY, INVALID_CHARACTERS, GAPPED)

# Engines, per distinct sequence.
TOO_LONG = "too_long"
OUT_OF_MEMORY = "out_of_memory"
NON_FINITE = "non_finite"
ENGINE_STATUSES = (OK, TOO_LONG, OUT_OF_MEMORY, NON_FINITE)

# The workflow: the sequence's shard failed after every retry.
NOT_COMPUTED = "not_computed"

# Results that the stage settings alone determine, and so may be served from the
# cache. `out_of_memory` depends on the GPU and on memory knobs left out of the
# settings, and `not_computed` on a failure: such sequences are computed again.
FINAL_STATUSES = (OK, TOO_LONG)


def for_stage(status: str, stage: str) -> str:
    """The proteins table's status for a record that `stage` did not compute."""
    return f"{status}_for_{stage}"

# `esmpipe export`'s index.tsv, per requested record: its file was written, the id names
# no record, or the record has no structure (and no more specific status).
EXPORTED = "exported"
NOT_FOUND = "not_found"
NO_STRUCTURE = "no_structure"
