"""`esmpipe init-model`: write a random-weight checkpoint in the Hugging Face layout.

The folder (config.json, model.safetensors, vocab.txt, tokenizer_config.json,
special_tokens_map.json) loads in esmpipe and in transformers alike; the demo
workflow and the tests use it instead of a hub download.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

from esmpipe.cli import UserError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from esmpipe.models.presets import PRESETS

    parser = subparsers.add_parser(
        "init-model",
        help="write a random-weight checkpoint (Hugging Face layout) from a named preset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        required=True,
        choices=sorted(PRESETS),
        metavar="NAME",
        help="one of: " + ", ".join(PRESETS),
    )
    parser.add_argument(
        "--output", required=True, type=Path, metavar="DIR", help="checkpoint folder to create"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace DIR if it is not empty")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = init_model(args.preset, args.output, seed=args.seed, force=args.force)
    log.info("init-model: wrote preset %s to %s", args.preset, folder)
    return 0


def init_model(
    preset_name: str, output: str | os.PathLike, *, seed: int = 0, force: bool = False
) -> Path:
    """Build the preset's model with seeded random weights and save it to `output`."""
    import torch

    import esmpipe.models
    from esmpipe.models import EsmConfig, EsmTokenizer
    from esmpipe.models.presets import get_preset

    try:
        preset = get_preset(preset_name)
    except KeyError as err:
        raise UserError(str(err.args[0])) from None
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"--output {output}: folder is not empty; pass --force to replace it")

    config = EsmConfig.from_dict(preset.config_dict())
    torch.manual_seed(seed)
    model = getattr(esmpipe.models, preset.model_class)(config)
    tokenizer = EsmTokenizer(vocab=preset.vocab)

    output.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: a crash never leaves a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        model.save_pretrained(staging, tokenizer=tokenizer)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
