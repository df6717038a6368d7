"""Gene calling on assembled contigs with Prodigal's metagenome mode (pyrodigal).

The calls reproduce what `prodigal -p meta` writes for the same contigs:
protein ids `<contig id>_<n>` with n counting from 1 per contig in coordinate
order, 1-based inclusive coordinates, the strand, the `partial=` flag (first
digit: the left end runs off the contig, second: the right end, in contig
coordinates as Prodigal's GFF has it), and the protein translated with the
translation table of the metagenomic bin that won the contig, ending in '*'
when the stop codon is on the contig (normalisation removes it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyrodigal

from esmpipe.io.fasta import read_fasta


@dataclass(frozen=True, slots=True)
class CalledGene:
    protein_id: str
    contig: str
    start: int  # 1-based, inclusive, start <= end whatever the strand
    end: int
    strand: int  # +1 or -1
    partial: str  # "00", "10", "01" or "11"
    sequence: str  # as Prodigal writes it, trailing '*' included
    sample: str | None = None


class GeneCaller:
    """Prodigal meta mode on one contig at a time.

    One finder serves every contig: in meta mode it holds no per-contig state,
    and building it loads the 50 metagenomic models only once.
    """

    def __init__(self) -> None:
        self._finder = pyrodigal.GeneFinder(meta=True)

    def call(self, contig: str, dna: str, *, sample: str | None = None) -> list[CalledGene]:
        """The genes on `dna` (whitespace removed; any case), ids `<contig>_<n>`."""
        # Prodigal reads only ACGT (other letters become gaps it will not call
        # across); it is case-insensitive, so the contig goes in as written.
        if not dna:
            return []
        return [
            CalledGene(
                protein_id=f"{contig}_{n}",
                contig=contig,
                start=gene.begin,
                end=gene.end,
                strand=gene.strand,
                partial=f"{int(gene.partial_begin)}{int(gene.partial_end)}",
                sequence=gene.translate(),
                sample=sample,
            )
            for n, gene in enumerate(self._finder.find_genes(dna), start=1)
        ]


def call_genes(path: str | os.PathLike[str], *, sample: str | None = None) -> Iterator[CalledGene]:
    """Call genes on every contig of a (plain or gzip) nucleotide FASTA file.

    `sample` is carried into each `CalledGene` unchanged. Raises
    `esmpipe.io.fasta.FastaError` for malformed FASTA. Records are not judged
    here (`esmpipe ingest` first checks them with `classify_contig`).
    """
    caller = GeneCaller()
    for record in read_fasta(path):
        yield from caller.call(record.id, "".join(record.sequence.split()), sample=sample)
