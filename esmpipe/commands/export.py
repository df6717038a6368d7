"""`esmpipe export`: predicted structures as PDB or mmCIF files, with an index TSV."""

from __future__ import annotations

import argparse
import sys

from esmpipe.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write structures of chosen records as PDB/mmCIF files plus index.tsv",
        description=(
            "Write one file per distinct structure (named <seq_hash>.pdb or .cif, never "
            "after a FASTA id), pLDDT (0-100) in the B-factor column, and index.tsv mapping "
            "each selected record (sample, protein_id) to its file; records without a "
            "structure and ids that name nothing are listed there with their status."
        ),
    )
    p.add_argument("--results", default="results", help="results folder (default: results)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", help="file of ids, one a line: protein_id, SAMPLE/PROTEIN_ID, "
                                     "seq_hash, or SAMPLE<TAB>PROTEIN_ID")
    which.add_argument("--where", help="SQL condition on the records view, e.g. "
                                       "\"mean_plddt > 70 AND ptm > 0.7\"")
    p.add_argument("--format", default="pdb", choices=("pdb", "cif"), help="file format")
    p.add_argument("--output", required=True,
                   help="folder to write (replaced whole if it is an earlier export)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from esmpipe.results import RecordNotFound, Results
    from esmpipe.results.export import export_structures, read_ids

    try:
        ids = read_ids(args.ids) if args.ids else None
        with Results(args.results) as res:
            summary = export_structures(res, args.output, fmt=args.format, ids=ids,
                                        where=args.where)
    except (FileNotFoundError, FileExistsError, RecordNotFound, ValueError, OSError) as err:
        raise UserError(str(err)) from err
    print(f"esmpipe export: {summary.files} structure files for {summary.records} records "
          f"({summary.missing} without a structure) in {args.output}; see {summary.index}",
          file=sys.stderr)
    return 0
