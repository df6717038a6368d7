"""What a cached result really depends on: the cache key of a stage.

A cache part may be reused only when everything that determines its values is
the same. That is:

- the model's identity, not its name: for a hub id, the commit its revision
  resolved to (a branch like `main` moves); for a local folder, a sha256 over
  its weight files and `config.json` (weights edited in place keep their name);
- the precision that actually runs: `dtype: auto` is resolved the way the
  engine resolves it on the job's device (float32 on a CPU, bfloat16 or
  float16 on a GPU; for folding a float16 stem and a float32 trunk), so a CPU
  run and a GPU run never share parts;
- the settings that change values (embedding layers, what is included, LM
  scores; fold recycles and early stopping);
- the engine's `OUTPUT_VERSION`, bumped whenever a fix changes an output.

Batch and memory knobs (max_tokens, chunk_size, threads) are left out: they
change values by rounding at most, and changing them must reuse the cache.

Hub identities are resolved offline, from the local Hugging Face cache
(`esmpipe fetch-model` fills it where the hub is reachable). Folder digests are
remembered per file by (path, size, mtime), so recomputing a key is cheap.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esmpipe.io.tables import atomic_path

STAGES = ("embed", "fold")
KEY_LENGTH = 16
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Files of a checkpoint folder whose content determines the model's outputs.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json",
                   "config.json", "vocab.txt")  # fmt: skip
# What `esmpipe fetch-model` takes from a hub repo: config, tokenizer, safetensors.
FETCH_PATTERNS = ("*.json", "*.txt", "*.safetensors")
# Settings that change values, per stage, with the value that means "the default".
VALUE_SETTINGS: dict[str, dict[str, Any]] = {
    "embed": {"layers": [-1], "include": ["mean"], "lm_score": "none"},
    "fold": {"num_recycles": None, "early_stop_tolerance": None},
}


class IdentityError(RuntimeError):
    """A model whose identity cannot be determined (e.g. a hub id not in the cache)."""


# --- model identity ---------------------------------------------------------------------


def is_folder(model: str | os.PathLike) -> bool:
    return Path(model).expanduser().is_dir()


def model_identity(model: str | os.PathLike, revision: str | None = None) -> str:
    """`sha256:<digest>` of a folder's weight files, or the hub commit `revision` resolves
    to in the local Hugging Face cache (offline). Raises IdentityError when neither."""
    if is_folder(model):
        return folder_identity(model)
    return hub_commit(str(model), revision)


def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit `revision` (default `main`) of `repo_id` points to in the local cache."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from esmpipe.models.hub import hub_cache_dir

    revision = revision or "main"
    cache = hub_cache_dir()
    try:
        # The snapshot folder a cached file resolves into is named by the commit.
        path = huggingface_hub.hf_hub_download(
            repo_id, "config.json", revision=revision, cache_dir=str(cache),
            local_files_only=True,
        )  # fmt: skip
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError, OSError):
        raise IdentityError(
            f"{repo_id} (revision {revision}): not a local folder and not in the Hugging Face "
            f"cache {cache}; fetch it first where the hub is reachable: "
            f"esmpipe fetch-model --model {repo_id}"
            + (f" --revision {revision}" if revision != "main" else "")
        ) from None
    commit = Path(path).parent.name
    if not COMMIT_RE.match(commit):
        # A nested file would sit deeper; config.json is at the snapshot's top.
        raise IdentityError(f"{repo_id}: unexpected cache layout at {path}")
    return commit


def hub_ref_file(repo_id: str, revision: str | None = None) -> Path | None:
    """The local cache's pointer file of a branch or tag (None for a commit, or when absent).

    `huggingface_hub` rewrites it when a download finds that the revision moved.
    """
    from esmpipe.models.hub import hub_cache_dir

    revision = revision or "main"
    if COMMIT_RE.match(revision) or "/" not in repo_id:
        return None
    ref = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    return ref if ref.is_file() else None


def weight_files(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder).expanduser()
    found = {p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern) if p.is_file()}
    return sorted(found)


def folder_identity(folder: str | os.PathLike) -> str:
    """`sha256:<hex>` over the folder's weight files (names and contents, sorted by name)."""
    files = weight_files(folder)
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise IdentityError(f"{folder}: no weight files (*.safetensors, *.bin) in the folder")
    digests = _DigestCache.load()
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + digests.digest(path).encode() + b"\n")
    digests.save()
    return f"sha256:{h.hexdigest()}"


class _DigestCache:
    """sha256 of files, remembered by (resolved path, size, mtime_ns).

    Lives in `$ESMPIPE_CACHE_HOME` (default `~/.cache/esmpipe`); a lost or
    corrupt file only costs hashing again.
    """

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls) -> _DigestCache:
        home = os.environ.get("ESMPIPE_CACHE_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "esmpipe"
        )
        path = Path(home) / "file-digests.json"
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def digest(self, file: Path) -> str:
        st = file.stat()
        name = str(file.resolve())
        entry = self.entries.get(name)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry["sha256"]
        h = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                h.update(chunk)
        self.entries[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                              "sha256": h.hexdigest()}  # fmt: skip
        self.changed = True
        return h.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.entries, sort_keys=True))
        except OSError:
            pass  # a read-only home only costs hashing again next time


def fetch_model(model: str, revision: str | None = None) -> dict[str, Any]:
    """Make a model available offline and return its identity record.

    A hub id is downloaded into the Hugging Face cache (config, tokenizer files and
    safetensors weights; `HF_HUB_OFFLINE=1` only checks the cache); a folder is
    digested. The record: model, revision, model_identity, path (the snapshot).
    """
    if is_folder(model):
        return {"model": str(model), "revision": None, "model_identity": folder_identity(model),
                "path": str(Path(model).expanduser().resolve())}  # fmt: skip
    import huggingface_hub

    from esmpipe.models.hub import hub_cache_dir, hub_offline

    try:
        path = huggingface_hub.snapshot_download(
            model, revision=revision, cache_dir=str(hub_cache_dir()),
            allow_patterns=list(FETCH_PATTERNS), local_files_only=hub_offline(),
        )  # fmt: skip
    except Exception as err:  # the hub's errors are many; all mean "not fetched"
        raise IdentityError(
            f"{model} (revision {revision or 'main'}): cannot fetch into {hub_cache_dir()}: {err}"
        ) from None
    commit = Path(path).name
    return {"model": model, "revision": revision, "model_identity": commit, "path": str(path)}


# --- precision ------------------------------------------------------------------------------


def fold_precision_name(stem: str, trunk: str) -> str:
    """The contract's spelling of the precision that ran: "float32", "float16+float32"."""
    return stem if stem == trunk else f"{stem}+{trunk}"


def normalize_dtype(text: str) -> str:
    """"float16 stem, float32 trunk" (the fold command's log spelling) -> "float16+float32"."""
    m = re.fullmatch(r"\s*(\w+) stem, (\w+) trunk\s*", text)
    return fold_precision_name(m.group(1), m.group(2)) if m else text


def job_runs_on_gpu(device: str, gpu: bool | None = None) -> bool:
    """Whether a stage's job runs on a GPU. `device: auto` picks a GPU when the job sees
    one: `gpu` says whether it will (None: whether this machine has one)."""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    if gpu is not None:
        return gpu
    import torch

    return torch.cuda.is_available()


def resolve_precision(
    stage: str, dtype: str, device: str, *, gpu: bool | None = None, bf16: bool | None = None
) -> str:
    """The precision a stage's job will run in, spelled as its parts record it.

    Mirrors `esmpipe.engine.device.resolve_dtype` / `resolve_fold_dtypes`: `auto` is
    float32 on a CPU; on a GPU, embedding runs bfloat16 (float16 where the GPU lacks
    bfloat16) and folding a float16 stem with a float32 trunk. An explicit dtype runs
    as given. `bf16`: whether the job's GPU has bfloat16 (None: this machine's GPU if
    it has one, else assumed, as on every GPU since Ampere).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if dtype != "auto":
        return dtype
    if not job_runs_on_gpu(device, gpu):
        return "float32"
    if stage == "fold":
        return fold_precision_name("float16", "float32")
    if bf16 is None:
        import torch

        bf16 = bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else True
    return "bfloat16" if bf16 else "float16"


# --- output version and the key -------------------------------------------------------------


def output_version(stage: str) -> int:
    """The stage engine's OUTPUT_VERSION (bumped when a fix changes outputs).

    Read from the engine module's source when the module is not imported yet, so
    that computing a key does not pay for importing torch.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    name = f"esmpipe.engine.{stage}"
    if name in sys.modules:
        return int(sys.modules[name].OUTPUT_VERSION)
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "OUTPUT_VERSION" for t in targets):
                return int(ast.literal_eval(node.value))
    return int(importlib.import_module(name).OUTPUT_VERSION)


def value_settings(stage: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stage's value-changing settings, defaults filled in, in one canonical form."""
    known = VALUE_SETTINGS[stage]
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{stage}: not a value-changing setting: {', '.join(unknown)} "
                         f"(expected {', '.join(known)})")  # fmt: skip
    out = {name: settings.get(name, default) for name, default in known.items()}
    if stage == "embed":
        out["layers"] = [int(v) for v in _as_list(out["layers"])]
        out["include"] = sorted(set(_as_list(out["include"])))
    return out


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def cache_key(
    stage: str,
    *,
    model_identity: str,
    dtype: str,
    output_version: int,
    settings: Mapping[str, Any] | None = None,
    model: str | None = None,
    revision: str | None = None,
    cache_root: str = "results/cache",
) -> dict[str, Any]:
    """The cache key record of a stage: what determines its values, their digest (`key`),
    the cache folder named by it, and `expect`, the metadata every reused part must have.

    `model` and `revision` are recorded for people; the key holds only the identity,
    so two names of the same weights share results.
    """
    values = value_settings(stage, settings)
    determined = {
        "stage": stage,
        "model_identity": model_identity,
        "dtype": dtype,
        "output_version": int(output_version),
        "settings": values,
    }
    key = digest(determined)
    return {
        **determined,
        "key": key,
        "cache_dir": f"{cache_root}/{stage}/{key}",
        "model": model,
        "revision": revision,
        "expect": {
            "model_identity": model_identity,
            "dtype": dtype,
            "output_version": int(output_version),
        },
    }


def write_json(record: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a record (identity or key) as JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
