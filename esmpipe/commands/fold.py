"""`esmpipe fold`: ESMFold structures and confidences of every distinct input sequence.

Input: FASTA (plain or gzip) or a shard Parquet with `seq_hash`, `sequence`.
Output: one row per distinct valid sequence (`seq_hash`, `length`, `status`,
`mean_plddt`, `ptm`, `plddt`, `max_pae`, `mean_pae`, `pdb`, `flags`, `recycles`;
status `non_finite` leaves the structure columns null); the Parquet
metadata records the model, revision, dtype, device, recycles, chunk size,
versions and settings. Rows are in the order computed (join on `seq_hash`);
a job killed part way resumes from its last finished batch, as `esmpipe embed`.

Precision: `--dtype auto` on CUDA runs the ESM-2 stem in float16 and the trunk
in float32, as ESMFold was published (whatever `esmfold_config.fp16_esm` says);
on the CPU `auto` folds in float32; an explicit dtype casts the whole model. The
metadata records the dtypes actually used.
"""

from __future__ import annotations

import argparse
import logging

from esmpipe.cli import UserError
from esmpipe.commands.embed import (
    _positive,
    add_common_arguments,
    resume_key,
    run_metadata,
    run_streaming,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fold", help="ESMFold structures, pLDDT, pTM and PAE", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, max_tokens=1024,
                         budget="memory bound of a batch: n sequences padded to L residues "
                                "need n * L^2 <= N^2; batches also hold only similar lengths "
                                "(padding within 10%%), and one sequence at a time on a CPU",
                         auto_dtype="float16 stem and float32 trunk on CUDA, "
                                    "float32 on CPU")  # fmt: skip
    parser.add_argument("--max-length", type=_positive, default=1280,
                        help="longer sequences get status too_long (default 1280)")  # fmt: skip
    parser.add_argument("--num-recycles", type=int, default=None,
                        help="trunk recycles (default: the checkpoint's max_recycles)")  # fmt: skip
    parser.add_argument("--chunk-size", type=_positive, default=None,
                        help="trunk pair-update chunk (less memory, slower); default: "
                             "automatic per batch, unchunked when the pair state fits in "
                             "80%% of free memory (esmpipe.engine.fold)")  # fmt: skip
    parser.add_argument("--early-stop-tolerance", type=_non_negative_float, default=None,
                        metavar="ANGSTROM",
                        help="stop recycling once the C-alpha structure changes by less "
                             "than this between recycles (RMS change of CA-CA distances, "
                             "as ColabFold); default off: every recycle, as the reference; "
                             "the recycles run go to the recycles column")  # fmt: skip
    parser.set_defaults(func=run)


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from esmpipe.engine.device import (
        describe_device,
        keep_freed_memory,
        resolve_device,
        resolve_fold_dtypes,
    )
    from esmpipe.engine.fold import OUTPUT_VERSION, FoldingEngine
    from esmpipe.engine.inputs import InputError, read_inputs
    from esmpipe.io.fasta import FastaError
    from esmpipe.io.partial import PartialOutput
    from esmpipe.io.tables import STRUCTURES_SCHEMA
    from esmpipe.models import EsmForProteinFolding

    if args.num_recycles is not None and args.num_recycles < 0:
        raise UserError(f"--num-recycles must be 0 or more, got {args.num_recycles}")
    try:
        inputs = read_inputs(args.input)
        device = resolve_device(args.device)
        stem_dtype, dtype = resolve_fold_dtypes(args.dtype, device)
    except (InputError, FastaError, ValueError) as err:
        raise UserError(str(err)) from None
    if device.type == "cpu":
        # Reuse the trunk's large freed temporaries instead of page-faulting fresh
        # mappings (a fifth of the CPU time otherwise; esmpipe.engine.device).
        keep_freed_memory()
    try:
        # The stem is built in its own dtype and loaded straight into it (a 3B stem
        # never passes through a full fp32 copy on the GPU); `dtype=None` keeps the
        # trunk as built (fp32) when only the stem is reduced.
        model = EsmForProteinFolding.from_pretrained(
            args.model, revision=args.revision, device=device,
            dtype=dtype if dtype == stem_dtype else None, stem_dtype=stem_dtype,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the checkpoint: {err}") from None
    model.eval()
    precision = _precision_split(model)
    engine = FoldingEngine(model, max_tokens=args.max_tokens, max_length=args.max_length,
                    num_recycles=args.num_recycles, chunk_size=args.chunk_size,
                    early_stop_tolerance=args.early_stop_tolerance)  # fmt: skip
    log.info("fold: %d distinct sequences from %s on %s (%s)", len(inputs.sequences),
             args.input, describe_device(device), precision)  # fmt: skip

    trunk = model.config.esmfold_config.trunk
    settings = {
        "num_recycles": args.num_recycles if args.num_recycles is not None else trunk.max_recycles,
        "max_length": args.max_length,
        "early_stop_tolerance": args.early_stop_tolerance,
    }

    def rows(hashes: list[str], sequences: list[str], results: list) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "seq_hash": hashes,
                "length": [len(s) for s in sequences],
                "status": [r.status for r in results],
                "mean_plddt": [r.mean_plddt for r in results],
                "ptm": [r.ptm for r in results],
                "plddt": [r.plddt for r in results],
                "max_pae": [r.max_pae for r in results],
                "mean_pae": [r.mean_pae for r in results],
                "pdb": [r.pdb for r in results],
                "flags": [r.flags for r in results],
                "recycles": [r.recycles for r in results],
            },
            schema=STRUCTURES_SCHEMA,
        )

    partial = PartialOutput(
        args.output, STRUCTURES_SCHEMA,
        resume_key(args, dtype=precision, output_version=OUTPUT_VERSION, **settings),
    )  # fmt: skip
    run_streaming(partial, inputs, engine.run, rows)
    metadata = run_metadata(
        args,
        inputs,
        partial.counts("status"),
        dtype=precision,
        device=device,
        output_version=OUTPUT_VERSION,
        chunk_size=args.chunk_size if args.chunk_size is not None else "auto",
        **settings,
    )
    rows_written = partial.finish(metadata)
    log.info("fold: wrote %d rows to %s", rows_written, args.output)
    return 0


def _precision_split(model) -> str:
    """The dtypes in use, e.g. "float16 stem, float32 trunk"."""
    from esmpipe.engine.device import dtype_name

    stem = dtype_name(next(model.esm.parameters()).dtype)
    trunk = dtype_name(next(model.trunk.parameters()).dtype)
    return stem if stem == trunk else f"{stem} stem, {trunk} trunk"
