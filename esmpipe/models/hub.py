"""Find checkpoint files: a local folder in the Hugging Face layout, or a hub id.

Hub ids go through `huggingface_hub` and its cache. The cache folder and the
offline switch are read from the environment at call time (`HF_HUB_CACHE`,
`HF_HOME`, `HF_HUB_OFFLINE`), because `huggingface_hub` freezes its own
constants at import time and tests (or a workflow job) may set them later.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"

_TRUE = {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """The hub cache folder `huggingface_hub` would use, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def describe_source(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """Where files are looked for, for error messages."""
    if is_local(name_or_path):
        return f"{name_or_path}"
    where = f"hub repo {name_or_path}" + (f", revision {revision!r}" if revision else "")
    mode = "offline (HF_HUB_OFFLINE)" if hub_offline() else "online or cached"
    return f"{where} ({mode}, cache {hub_cache_dir()})"


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path | None:
    """The local path of `filename` in a folder or hub repo, or None when it is absent.

    Raises `OSError` (with the repo and revision) when the repo or revision
    itself cannot be found, or when the hub cannot be reached and the cache holds
    nothing of the repo.
    """
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser() / filename
        return path if path.is_file() else None
    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(name_or_path)
    # HF_HUB_OFFLINE wins over local_files_only=False, as in huggingface_hub.
    offline = bool(local_files_only) or hub_offline()
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline,
            token=token,
        )
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id}: no such local folder, and not a valid hub id (org/name)"
        ) from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{repo_id}: no such local folder, and no such repository on the Hugging Face hub"
        ) from None
    except RevisionNotFoundError:
        raise OSError(f"{repo_id}: revision {revision!r} not found on the hub") from None
    except LocalEntryNotFoundError:
        # Online, this means the hub could not be reached and the file is not cached.
        # Without any cached copy of the repo, "file not found" would mislead (and every
        # further file would wait out the same retries): say what happened instead.
        if not offline and not (cache / f"models--{repo_id.replace('/', '--')}").is_dir():
            raise OSError(
                f"{repo_id}: no such local folder, the Hugging Face hub could not be reached, "
                f"and the repository is not in the cache {cache}; check the path or the "
                "network, or fill the cache where the hub is reachable and set HF_HUB_CACHE "
                "(and HF_HUB_OFFLINE=1)"
            ) from None
        return None
    except EntryNotFoundError:
        return None
    return Path(path)


@dataclass
class WeightFiles:
    """The weight files of a checkpoint: safetensors or (only when allowed) pickle shards."""

    paths: list[Path]
    format: str  # "safetensors" or "pickle"


def resolve_weights(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = False,
) -> WeightFiles:
    """Find the weight files: `model.safetensors`, its sharded index, or (opt-in) `.bin`."""
    kwargs = dict(
        revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    where = describe_source(name_or_path, revision)

    single = resolve_file(name_or_path, SAFETENSORS_NAME, **kwargs)
    if single is not None:
        return WeightFiles([single], "safetensors")
    index = resolve_file(name_or_path, SAFETENSORS_INDEX_NAME, **kwargs)
    if index is not None:
        return WeightFiles(_resolve_shards(name_or_path, index, kwargs), "safetensors")

    pickle_single = resolve_file(name_or_path, PICKLE_NAME, **kwargs)
    pickle_index = (
        None if pickle_single else resolve_file(name_or_path, PICKLE_INDEX_NAME, **kwargs)
    )
    if pickle_single is None and pickle_index is None:
        raise FileNotFoundError(
            f"{where}: no weights found (looked for {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, "
            f"{PICKLE_NAME})"
        )
    if not allow_pickle:
        found = PICKLE_NAME if pickle_single else PICKLE_INDEX_NAME
        raise ValueError(
            f"{where}: only a pickle checkpoint ({found}) is available, and pickles are not "
            "loaded by default because unpickling can run arbitrary code. Several ESM repos got "
            "safetensors only through a conversion pull request: pass a revision that has them, "
            "e.g. revision='refs/pr/4' for facebook/esmfold_v1 (check the repo's 'Files' and "
            "pull requests on the hub), or pass allow_pickle=True if you trust the file (it is "
            "then read with torch.load(weights_only=True))."
        )
    if pickle_single is not None:
        return WeightFiles([pickle_single], "pickle")
    return WeightFiles(_resolve_shards(name_or_path, pickle_index, kwargs), "pickle")


def _resolve_shards(name_or_path: str | os.PathLike, index: Path, kwargs: dict) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index}: not a valid shard index ({err})") from None
    shards = []
    for shard in sorted(set(weight_map.values())):
        path = resolve_file(name_or_path, shard, **kwargs)
        if path is None:
            raise FileNotFoundError(f"{index}: shard {shard} is listed but missing")
        shards.append(path)
    return shards
