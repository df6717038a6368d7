"""`esmpipe embed`: mean-pooled ESM-2 embeddings of every distinct input sequence.

Input: FASTA (plain or gzip) or a shard Parquet with `seq_hash`, `sequence`.
Output: one row per distinct valid sequence (`seq_hash`, `length`, `status`,
`embedding` as fixed_size_list<float32>[hidden]); the Parquet metadata records
the model, revision, dtype, device, layer, pooling, versions and settings.

Rows are in the order computed (join on `seq_hash`). Each finished batch is
saved at once (`esmpipe.io.partial`): a job killed part way and started again
with the same arguments computes only the sequences it had not finished.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esmpipe.cli import UserError

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from esmpipe.engine.inputs import Inputs
    from esmpipe.io.partial import PartialOutput

log = logging.getLogger(__name__)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, max_tokens: int, budget: str, auto_dtype: str
) -> None:
    """Arguments shared by `embed` and `fold`."""
    parser.add_argument("--model", required=True, help="hub id or local checkpoint folder")
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="FASTA (plain or gzip) or shard Parquet (seq_hash, sequence)",
    )
    parser.add_argument("--output", required=True, type=Path, help="output Parquet file")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--dtype", default="auto",
                        choices=("auto", "float32", "float16", "bfloat16"),
                        help=f"auto: {auto_dtype}")  # fmt: skip
    parser.add_argument("--device", default="auto",
                        help="auto (default): the CPU without CUDA, the GPU when one is visible; "
                             "with several, a GPU no other esmpipe process holds, claimed by a "
                             "lock file in $ESMPIPE_GPU_LOCK_DIR (default: the temp folder), "
                             "waiting while all are held. cpu, cuda or cuda:N: that device, "
                             "no lock")  # fmt: skip
    parser.add_argument("--max-tokens", type=_positive, default=max_tokens,
                        help=f"batch budget: {budget} (default {max_tokens})")  # fmt: skip


def run_metadata(
    args: argparse.Namespace,
    inputs: Inputs,
    status_counts: dict[str, int],
    *,
    dtype: str,
    device: torch.device,
    **settings: Any,
) -> dict[str, Any]:
    """Provenance shared by `embed` and `fold`: model, precision, device, versions, input
    and status counts; `settings` are the command's own (layer, recycles, ...).

    Every part records what its cache key is made of (`esmpipe.pipeline.identity`):
    `model_identity` (the hub commit the revision resolved to, or `sha256:` of the
    folder's weight files; null if it cannot be told), `dtype` as it ran
    ("float16+float32" for a float16 stem and float32 trunk) and `output_version`;
    the planner reuses a part only when these match what the run expects.
    """
    import torch

    from esmpipe import __version__
    from esmpipe.engine.device import describe_device
    from esmpipe.io.tables import file_sha256
    from esmpipe.pipeline import identity

    try:
        model_identity: str | None = identity.model_identity(args.model, args.revision)
    except identity.IdentityError as err:
        log.warning("model identity unknown (%s): parts of this run are never reused", err)
        model_identity = None
    if "output_version" not in settings:
        stage = "fold" if args.func.__module__.endswith(".fold") else "embed"
        settings["output_version"] = identity.output_version(stage)
    return {
        "model": str(args.model),
        "revision": args.revision,
        "model_identity": model_identity,
        "dtype": identity.normalize_dtype(dtype),
        "device": describe_device(device),
        "max_tokens": args.max_tokens,
        **settings,
        "esmpipe_version": __version__,
        "torch_version": torch.__version__,
        "input": str(args.input),
        "input_sha256": file_sha256(args.input),
        "input_records": inputs.records,
        "input_skipped": dict(sorted(inputs.skipped.items())),
        "status_counts": dict(sorted(status_counts.items())),
    }


def resume_key(args: argparse.Namespace, **values: Any) -> dict[str, Any]:
    """What determines a job's values, for `esmpipe.io.partial.PartialOutput`: a retry
    resumes only a partial output computed from the same input, model and settings."""
    from esmpipe.io.tables import file_sha256

    return {
        "command": args.func.__module__,
        "input_sha256": file_sha256(args.input),
        "model": str(args.model),
        "revision": args.revision,
        **values,
    }


def run_streaming(
    partial: PartialOutput,
    inputs: Inputs,
    run: Callable[[list[str]], Iterator[tuple[list[int], list[Any]]]],
    rows: Callable[[list[str], list[str], list[Any]], pa.Table],
) -> int:
    """Run the engine over the inputs `partial` does not hold yet, writing each batch as
    it finishes; returns how many sequences this try computed.

    `run(sequences)` yields `(indices, results)` per batch; `rows(hashes, sequences,
    results)` turns them into the output's rows.
    """
    done = partial.done()
    todo = [i for i, h in enumerate(inputs.hashes) if h not in done]
    if done:
        log.info("resuming: %d of %d sequences already computed", len(inputs.hashes) - len(todo),
                 len(inputs.hashes))  # fmt: skip
    sequences = [inputs.sequences[i] for i in todo]
    for indices, results in run(sequences):
        members = [todo[i] for i in indices]
        partial.write(rows([inputs.hashes[m] for m in members],
                           [inputs.sequences[m] for m in members], results))  # fmt: skip
    return len(todo)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="mean-pooled ESM-2 embeddings", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, max_tokens=16384,
                         budget="padded tokens, BOS/EOS included, per batch",
                         auto_dtype="bfloat16 (or float16) on CUDA, float32 on CPU")  # fmt: skip
    parser.add_argument("--max-length", type=_positive, default=None,
                        help="longer sequences get status too_long "
                             "(default: 1022 for rotary models, the position table's limit "
                             "for absolute ones)")  # fmt: skip
    parser.add_argument("--layer", type=int, default=-1,
                        help="hidden state to pool: -1 the last (default), 0 the embeddings, "
                             "k the output of layer k")  # fmt: skip
    parser.add_argument("--pooling", default="mean", choices=("mean",),
                        help="mean over residues, BOS/EOS/padding excluded")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from esmpipe.engine.device import describe_device, dtype_name, resolve_device, resolve_dtype
    from esmpipe.engine.embed import OUTPUT_VERSION, Embedder
    from esmpipe.engine.inputs import InputError, read_inputs
    from esmpipe.io.fasta import FastaError
    from esmpipe.io.partial import PartialOutput
    from esmpipe.io.tables import EMBEDDINGS_SCHEMA, embedding_array
    from esmpipe.models import EsmModel, EsmTokenizer

    try:
        inputs = read_inputs(args.input)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (InputError, FastaError, ValueError) as err:
        raise UserError(str(err)) from None
    try:
        tokenizer = EsmTokenizer.from_pretrained(args.model, revision=args.revision)
        model = EsmModel.from_pretrained(
            args.model, revision=args.revision, dtype=dtype, device=device, add_pooling_layer=False
        )
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the checkpoint: {err}") from None
    model.eval()
    try:
        embedder = Embedder(model, tokenizer, layer=args.layer, max_tokens=args.max_tokens,
                            max_length=args.max_length)  # fmt: skip
    except ValueError as err:
        raise UserError(str(err)) from None
    log.info("embed: %d distinct sequences from %s on %s (%s)", len(inputs.sequences),
             args.input, describe_device(device), dtype_name(dtype))  # fmt: skip

    dim = embedder.hidden_size
    schema = EMBEDDINGS_SCHEMA(dim)

    def rows(hashes: list[str], sequences: list[str], results: list) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "seq_hash": hashes,
                "length": [len(s) for s in sequences],
                "status": [r.status for r in results],
                "embedding": embedding_array([r.embedding for r in results], dim),
            },
            schema=schema,
        )

    settings = {"layer": args.layer, "pooling": args.pooling, "max_length": embedder.max_length}
    partial = PartialOutput(
        args.output, schema,
        resume_key(args, dtype=dtype_name(dtype), output_version=OUTPUT_VERSION, **settings),
    )  # fmt: skip
    run_streaming(partial, inputs, embedder.run, rows)
    metadata = run_metadata(args, inputs, partial.counts("status"), dtype=dtype_name(dtype),
                            device=device, output_version=OUTPUT_VERSION,
                            **settings)  # fmt: skip
    rows_written = partial.finish(metadata)
    log.info("embed: wrote %d rows to %s", rows_written, args.output)
    return 0
