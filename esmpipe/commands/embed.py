"""`esmpipe embed`: ESM-2 embeddings and language-model scores of every distinct input sequence.

Input: FASTA (plain or gzip) or a shard Parquet with `seq_hash`, `sequence`.
Output: one row per distinct valid sequence (`seq_hash`, `length`, `status`,
`embedding` as fixed_size_list<float32>[hidden], then what `--include`,
`--layers` and `--lm-score` ask for, and `windowed`; see
`esmpipe.io.tables.EMBEDDINGS_SCHEMA`); the Parquet metadata records the
model, revision, dtype, device, layers, versions and settings.

Rows are in the order computed (join on `seq_hash`). Each finished batch is
saved at once (`esmpipe.io.partial`): a job killed part way and started again
with the same arguments computes only the sequences it had not finished.
"""

from __future__ import annotations

import argparse
import logging
import re
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
    parser: argparse.ArgumentParser, *, max_tokens: int | None, budget: str, auto_dtype: str
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
    default = f"default {max_tokens}" if max_tokens is not None else "default: by device"
    parser.add_argument("--max-tokens", type=_positive, default=max_tokens,
                        help=f"batch budget: {budget} ({default})")  # fmt: skip


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


def _layers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one layer")
    return values


def _include(text: str) -> list[str]:
    from esmpipe.engine.embed import INCLUDE_CHOICES

    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in INCLUDE_CHOICES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma list of {', '.join(INCLUDE_CHOICES)}"
        )
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="ESM-2 embeddings and LM scores", description=__doc__.split("\n\n")[0]
    )
    add_common_arguments(parser, max_tokens=None,
                         budget="real tokens (BOS/EOS included, no padding) per batch; "
                                "4096 on the CPU, 32768 on a GPU",
                         auto_dtype="bfloat16 (or float16) on CUDA, float32 on CPU")  # fmt: skip
    parser.add_argument("--max-length", type=_positive, default=None,
                        help="longer sequences get status too_long (default: no limit; "
                             "sequences longer than the model's window, 1022 residues for "
                             "ESM-2, are embedded in overlapping windows)")  # fmt: skip
    # `--layers -1,20` (the documented spelling) must read as a value, not as an option:
    # argparse takes only plain negative numbers ("-1") for values.
    parser._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*$")
    parser.add_argument("--layers", type=_layers, default=None,
                        help="comma list of hidden states: -1 the last (default), 0 the "
                             "embeddings, k the output of layer k, negative from the end; the "
                             "first gives `embedding`, each further one a `layer_<N>` "
                             "column")  # fmt: skip
    parser.add_argument("--layer", type=int, default=None,
                        help="one layer (the former option; same as --layers N)")
    parser.add_argument("--include", type=_include, default=["mean"],
                        help="comma list of mean (always written), bos, per_residue "
                             "(float16 per residue, of the first layer)")  # fmt: skip
    parser.add_argument("--lm-score", default="none", choices=("none", "unmasked", "pseudo"),
                        help="unmasked: mean_log_prob from the same pass; pseudo: also "
                             "pseudo_perplexity (one masked copy per residue, L times the "
                             "work)")  # fmt: skip
    parser.add_argument("--pooling", default="mean", choices=("mean",),
                        help="mean over residues, BOS/EOS excluded")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from esmpipe.engine.device import describe_device, dtype_name, resolve_device, resolve_dtype
    from esmpipe.engine.embed import OUTPUT_VERSION, Embedder
    from esmpipe.engine.inputs import InputError, read_inputs
    from esmpipe.io.fasta import FastaError
    from esmpipe.io.partial import PartialOutput
    from esmpipe.io.tables import EMBEDDINGS_SCHEMA, embedding_array, per_residue_array
    from esmpipe.models import EsmForMaskedLM, EsmModel, EsmTokenizer

    if args.layers is not None and args.layer is not None:
        raise UserError("--layer and --layers: give one of them (--layer N is --layers N)")
    layers = args.layers if args.layers is not None else [
        args.layer if args.layer is not None else -1]  # fmt: skip
    try:
        inputs = read_inputs(args.input)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (InputError, FastaError, ValueError) as err:
        raise UserError(str(err)) from None
    try:
        tokenizer = EsmTokenizer.from_pretrained(args.model, revision=args.revision)
        if args.lm_score != "none":
            model = EsmForMaskedLM.from_pretrained(args.model, revision=args.revision,
                                                   dtype=dtype, device=device)  # fmt: skip
        else:
            model = EsmModel.from_pretrained(args.model, revision=args.revision, dtype=dtype,
                                             device=device, add_pooling_layer=False)  # fmt: skip
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the checkpoint: {err}") from None
    model.eval()
    try:
        embedder = Embedder(model, tokenizer, layers=layers, include=args.include,
                            lm_score=args.lm_score, max_tokens=args.max_tokens,
                            max_length=args.max_length)  # fmt: skip
    except ValueError as err:
        raise UserError(str(err)) from None
    args.max_tokens = embedder.max_tokens
    log.info("embed: %d distinct sequences from %s on %s (%s), %d tokens per batch",
             len(inputs.sequences), args.input, describe_device(device), dtype_name(dtype),
             embedder.max_tokens)  # fmt: skip

    dim = embedder.hidden_size
    spec = embedder.spec
    schema = EMBEDDINGS_SCHEMA(dim, layers=spec.further_layers, bos=spec.bos,
                               per_residue=spec.per_residue, lm_score=spec.lm_score,
                               windowed=True)  # fmt: skip

    def rows(hashes: list[str], sequences: list[str], results: list) -> pa.Table:
        columns: dict[str, Any] = {
            "seq_hash": hashes,
            "length": [len(s) for s in sequences],
            "status": [r.status for r in results],
            "embedding": embedding_array([r.embedding for r in results], dim),
        }
        if spec.bos:
            columns["bos"] = embedding_array([r.bos for r in results], dim)
        if spec.per_residue:
            columns["per_residue"] = per_residue_array([r.per_residue for r in results], dim)
        for layer in spec.further_layers:
            columns[f"layer_{layer}"] = embedding_array([r.layers.get(layer) for r in results],
                                                        dim)  # fmt: skip
        if spec.lm_score != "none":
            columns["mean_log_prob"] = [r.mean_log_prob for r in results]
        if spec.lm_score == "pseudo":
            columns["pseudo_perplexity"] = [r.pseudo_perplexity for r in results]
        columns["windowed"] = [r.windowed for r in results]
        return pa.Table.from_pydict(columns, schema=schema)

    settings = {
        "layer": spec.layers[0],
        "layers": list(spec.layers),
        "include": sorted(set(args.include) | {"mean"}),
        "lm_score": spec.lm_score,
        "pooling": args.pooling,
        "max_length": embedder.max_length,
        "window": embedder.window,
    }
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
