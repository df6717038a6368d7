"""`esmpipe cache-key`: the cache key of a stage, and `esmpipe fetch-model`.

`cache-key` prints (or writes) the JSON record of what determines a stage's
values: the resolved model identity, the precision the job will run in, the
value-changing settings and the engine's output version, with their digest and
the cache folder it names (see `esmpipe.pipeline.identity`).

`fetch-model` downloads a hub model into the Hugging Face cache (or digests a
folder) and writes its identity, so that GPU jobs can run with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esmpipe.cli import UserError

_CHOICE = {"auto": None, "yes": True, "no": False}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache-key", help="print the cache key of a stage (model identity, precision, settings)",
        description=__doc__.split("\n\n")[1],
    )  # fmt: skip
    p.add_argument("--stage", required=True, choices=("embed", "fold"))
    p.add_argument("--model", help="hub id or local checkpoint folder")
    p.add_argument("--revision", default=None, help="hub revision (default main)")
    p.add_argument("--identity", type=Path, metavar="JSON",
                   help="identity record written by `esmpipe fetch-model` (instead of resolving "
                        "--model from the local cache)")  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--device", default="auto", help="the jobs' --device (auto, cpu, cuda[:N])")
    p.add_argument("--gpu", default="auto", choices=tuple(_CHOICE),
                   help="whether the jobs see a GPU, for --device auto (auto: whether this "
                        "machine has one)")  # fmt: skip
    p.add_argument("--bf16", default="auto", choices=tuple(_CHOICE),
                   help="whether the jobs' GPU has bfloat16 (auto: this machine's GPU, or yes)")
    p.add_argument("--settings", default="{}",
                   help="JSON object of the value-changing settings (embed: layers, include, "
                        "lm_score; fold: num_recycles, early_stop_tolerance)")  # fmt: skip
    p.add_argument("--cache-root", default="results/cache")
    p.add_argument("--output", type=Path, help="write the JSON here (default: print it)")
    p.add_argument("--cache-dir-output", type=Path, metavar="FILE",
                   help="also write the cache folder's path, one line, to FILE")
    p.add_argument("--field", help="print only this field of the record (e.g. cache_dir, key)")
    p.set_defaults(func=run)

    f = subparsers.add_parser(
        "fetch-model", help="download a hub model into the Hugging Face cache, write its identity",
        description=__doc__.split("\n\n")[2],
    )  # fmt: skip
    f.add_argument("--model", required=True, help="hub id or local checkpoint folder")
    f.add_argument("--revision", default=None, help="hub revision (default main)")
    f.add_argument("--output", type=Path, help="write the identity JSON here (default: print)")
    f.set_defaults(func=run_fetch)


def run(args: argparse.Namespace) -> int:
    from esmpipe.pipeline import identity

    if args.identity is not None:
        try:
            record = json.loads(args.identity.read_text())
            model_identity = record["model_identity"]
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--identity {args.identity}: not an identity record ({err})") from None
        model, revision = args.model or record.get("model"), args.revision or record.get("revision")
    elif args.model:
        model, revision = args.model, args.revision
        try:
            model_identity = identity.model_identity(model, revision)
        except identity.IdentityError as err:
            raise UserError(str(err)) from None
    else:
        raise UserError("give --model or --identity")
    try:
        settings = json.loads(args.settings)
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
        dtype = identity.resolve_precision(args.stage, args.dtype, args.device,
                                           gpu=_CHOICE[args.gpu], bf16=_CHOICE[args.bf16])
        key = identity.cache_key(
            args.stage, model_identity=model_identity, dtype=dtype,
            output_version=identity.output_version(args.stage), settings=settings,
            model=model, revision=revision, cache_root=args.cache_root,
        )  # fmt: skip
    except ValueError as err:
        raise UserError(f"--settings: {err}") from None
    if args.cache_dir_output is not None:
        from esmpipe.io.tables import atomic_path

        with atomic_path(args.cache_dir_output) as tmp:
            tmp.write_text(key["cache_dir"] + "\n")
    _emit(key, args.output, args.field)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from esmpipe.pipeline import identity

    try:
        record = identity.fetch_model(args.model, args.revision)
    except identity.IdentityError as err:
        raise UserError(str(err)) from None
    _emit(record, args.output, None)
    return 0


def _emit(record: dict, output: Path | None, field: str | None) -> None:
    from esmpipe.pipeline.identity import write_json

    if field is not None:
        if field not in record:
            raise UserError(f"--field {field}: the record has {', '.join(sorted(record))}")
        value = record[field]
        print(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        return
    if output is not None:
        write_json(record, output)
    else:
        json.dump(record, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
