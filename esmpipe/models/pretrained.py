"""`EsmPreTrainedModel`: weight init, `from_pretrained` and `save_pretrained` for the ESM family.

Loading is a plain copy of tensors whose names equal the module names, after one
explicit rename table (`_checkpoint_renames`) and two structural fixes that
published checkpoints need:

- base-model prefix: a checkpoint of `EsmModel` has no `esm.` prefix, one of a
  model with a head (`EsmForMaskedLM`, `EsmForProteinFolding`, ...) has it; the
  prefix is added or stripped so either loads into either. Loading a base model
  from a headed checkpoint drops the head's tensors; loading a headed model
  from a checkpoint without that head initialises the head (both logged), as
  the reference does when fine-tuning starts from a language-model checkpoint.
- rotary `inv_freq`: older checkpoints store one copy per layer
  (`encoder.layer.N.attention.self.rotary_embeddings.inv_freq`), newer ones one
  shared copy (`rotary_embeddings.inv_freq`); the stored values are kept, not
  recomputed, because they may have been saved in fp16.

Everything else must match: missing keys, unexpected keys and shape mismatches
raise a ValueError that lists them by name. The model's parameters are built on
the meta device and the checkpoint tensors are assigned into them, so large
checkpoints do not pay for a random initialisation that is thrown away.

Subclasses (the folding model too) set `config_class`, `_tied_weights_keys`,
`_keys_to_ignore_on_load_missing` / `_keys_to_ignore_on_load_unexpected`
(regular expressions), extend `_init_weights` for their own modules, and may
override `_rename_checkpoint_keys`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from esmpipe.models.config import CONFIG_NAME, EsmConfig
from esmpipe.models.heads import EsmLMHead
from esmpipe.models.hub import SAFETENSORS_NAME, describe_source, resolve_file, resolve_weights

logger = logging.getLogger(__name__)


# -- outputs ------------------------------------------------------------------


@dataclasses.dataclass
class ModelOutput:
    """Base of the output dataclasses: attribute access, `out["name"]` and tuple order.

    As in the reference, `to_tuple()`, `keys()` and integer indexing skip fields
    that are None, and `dict(out)` / `**out` give the set fields.
    NOTE: iterating yields the values (so `logits, hidden = out` unpacks like a
    tuple); the reference's outputs are dicts and iterate over their keys.
    """

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


# -- dtype helpers --------------------------------------------------------------


def resolve_dtype(dtype: torch.dtype | str | None, config: EsmConfig) -> torch.dtype | None:
    """A torch dtype from a torch.dtype, a name ("float16", "bf16") or "auto" (the config's)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if config.dtype is None:
            return None
        dtype = config.dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {
        "fp32": "float32",
        "fp16": "float16",
        "half": "float16",
        "bf16": "bfloat16",
        "float": "float32",
    }
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype: unknown dtype {dtype!r}")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every nn.Parameter on the meta device while the block runs; buffers stay real.

    Loading then assigns the checkpoint's tensors instead of paying for a random
    initialisation that is thrown away. Buffers are left alone because modules
    compute them (positions, frequencies, residue tables) and checkpoints often
    do not store them.
    """
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _draw_normal(weight: torch.Tensor, std: float) -> None:
    # A meta tensor has no values to draw (loading assigns the checkpoint's, `_materialize`
    # initialises the rest), and normal_ there imports torch._dynamo: ~1 s of startup.
    if not weight.is_meta:
        weight.normal_(0.0, std)


# -- the base class -------------------------------------------------------------


class EsmPreTrainedModel(nn.Module):
    """Base of every ESM model: holds `config`, initialises weights, loads and saves checkpoints."""

    config_class: ClassVar[type] = EsmConfig
    base_model_prefix: ClassVar[str] = "esm"
    # target key -> source key; the target is the same Parameter as the source
    # (when config.tie_word_embeddings) and is written once, under the source name.
    _tied_weights_keys: ClassVar[dict[str, str]] = {}
    # Regular expressions (re.search) of keys that may be absent from / extra in a checkpoint.
    # The pooler is absent from language-model checkpoints (it is then newly
    # initialised, as the reference does); models without one ignore a stored one.
    # Old checkpoints carry the position_ids buffer, and rotary models may meet
    # absolute position embeddings (the reference ignores those as well).
    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = [r"(^|\.)pooler\."]
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [
        r"(^|\.)pooler\.",
        r"(^|\.)embeddings\.position_ids$",
        r"(^|\.)position_embeddings\.weight$",
    ]
    # (pattern, replacement) applied with re.sub to every checkpoint key, in order.
    # `transformers` writes BERT-era names for the per-layer LayerNorms.
    _checkpoint_renames: ClassVar[list[tuple[str, str]]] = [
        (r"LayerNorm\.gamma$", "LayerNorm.weight"),
        (r"LayerNorm\.beta$", "LayerNorm.bias"),
    ]

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        if not isinstance(config, EsmConfig):
            raise TypeError(f"config must be an EsmConfig, got {type(config).__name__}")
        self.config = config

    # -- initialisation -----------------------------------------------------------

    def post_init(self) -> None:
        """Initialise every weight (as the reference does) and tie the tied ones."""
        self.apply(self._init_weights)
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, initializer_range) for Linear/Embedding, ones/zeros for LayerNorm.

        Modules with computed buffers define `reset_buffers()`, called here too.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _draw_normal(module.weight, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            _draw_normal(module.weight, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, EsmLMHead):
            module.bias.zero_()
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            # Computed buffers (positions, rotary frequencies) are rebuilt, not drawn.
            reset()

    def tied_weights(self) -> dict[str, str]:
        """The tied (target, source) keys that apply to this instance."""
        if not self.config.tie_word_embeddings:
            return {}
        names = set(dict(self.named_parameters(remove_duplicate=False)))
        return {t: s for t, s in self._tied_weights_keys.items() if t in names and s in names}

    def tie_weights(self) -> None:
        for target, source in self.tied_weights().items():
            owner_name, _, attr = target.rpartition(".")
            owner = self.get_submodule(owner_name)
            setattr(owner, attr, self.get_parameter(source))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- loading ------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        allow_pickle: bool = False,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        strict: bool = True,
        config: EsmConfig | None = None,
        **model_kwargs: Any,
    ) -> Self:
        """Load a checkpoint from a local folder in the Hugging Face layout or a hub id.

        `dtype`: a torch.dtype, a name, or "auto" for the config's `dtype`; None keeps
        the dtypes the model is built with (fp32). `strict=False` turns missing and
        unexpected keys into a logged warning (missing ones keep their random init);
        shape mismatches always raise. Keyword arguments that name config fields
        override the checkpoint's config (e.g. `num_labels=3`,
        `problem_type="multi_label_classification"`), as in the reference; the rest
        go to the constructor (e.g. `add_pooling_layer=False`).
        """
        hub_kwargs = dict(
            revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        if config is None:
            config_path = resolve_file(name_or_path, CONFIG_NAME, **hub_kwargs)
            if config_path is None:
                raise FileNotFoundError(
                    f"{describe_source(name_or_path, revision)}: no {CONFIG_NAME} found; "
                    f"a checkpoint folder needs {CONFIG_NAME} beside its weights"
                )
            config = cls.config_class.from_json_file(config_path)
        config = _override_config(config, model_kwargs)
        weights = resolve_weights(name_or_path, allow_pickle=allow_pickle, **hub_kwargs)
        state_dict: dict[str, torch.Tensor] = {}
        for path in weights.paths:
            state_dict.update(_read_weights(path, weights.format))

        torch_dtype = resolve_dtype(dtype, config)
        target = torch.device(device) if device is not None else torch.device("cpu")
        with parameters_on_meta():
            model = cls(config, **model_kwargs)
        if torch_dtype is not None:
            # Parameters only: computed buffers (rotary frequencies, geometry tables)
            # keep the precision the modules chose for them.
            for module in model.modules():
                for name, param in module._parameters.items():
                    if param is not None and param.is_floating_point():
                        module._parameters[name] = nn.Parameter(
                            param.to(torch_dtype), requires_grad=param.requires_grad
                        )
        model.load_checkpoint_state_dict(
            state_dict, strict=strict, device=target, source=str(name_or_path)
        )
        if torch_dtype is not None:
            model.config.dtype = _dtype_name(torch_dtype)
        model.eval()
        return model

    def _rename_checkpoint_keys(
        self, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Apply `_checkpoint_renames` and fold per-layer rotary `inv_freq` into the shared one."""
        renamed: dict[str, torch.Tensor] = {}
        rotary = re.compile(
            r"^(.*?)encoder\.layer\.[^.]+\.attention\.self\.rotary_embeddings\.inv_freq$"
        )
        for key in sorted(state_dict):
            new = key
            for pattern, replacement in self._checkpoint_renames:
                new = re.sub(pattern, replacement, new)
            match = rotary.match(new)
            if match:
                # All layers hold the same frequencies; keep the first copy.
                new = f"{match.group(1)}rotary_embeddings.inv_freq"
                if new in renamed:
                    continue
            renamed[new] = state_dict[key]
        return renamed

    def _match_prefix(
        self, state_dict: dict[str, torch.Tensor], expected: set[str]
    ) -> tuple[dict[str, torch.Tensor], list[str], bool]:
        """Add or strip the base-model prefix.

        Returns the state dict, the checkpoint keys dropped as another model's head,
        and whether the checkpoint holds none of this model's head (a new head).
        """
        prefix = self.base_model_prefix + "."
        model_has_prefix = any(k.startswith(prefix) for k in expected)
        ckpt_has_prefix = any(k.startswith(prefix) for k in state_dict)
        dropped: list[str] = []
        if ckpt_has_prefix and not model_has_prefix:
            # Base model from a headed checkpoint (MLM, classifier, ESMFold stem).
            out = {}
            for key, value in state_dict.items():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = value
                else:
                    dropped.append(key)
            return out, dropped, False
        if model_has_prefix and not ckpt_has_prefix:
            # Headed model from a base-model checkpoint.
            state_dict = {prefix + k: v for k, v in state_dict.items()}
        if not model_has_prefix:
            return state_dict, dropped, False
        head_keys = {k for k in expected if not k.startswith(prefix)}
        tied = set(self.tied_weights())
        new_head = bool(head_keys - tied) and not (head_keys - tied) & set(state_dict)
        if new_head:
            dropped = [k for k in state_dict if not k.startswith(prefix)]
            state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        return state_dict, dropped, new_head

    def load_checkpoint_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        *,
        strict: bool = True,
        device: torch.device | str | None = None,
        source: str = "checkpoint",
    ) -> None:
        """Copy a checkpoint's tensors into this model (which may live on the meta device).

        Each tensor is cast to the dtype of the parameter it replaces and moved to
        `device`. Parameters not in the checkpoint that may be absent (tied, ignored,
        a new head, or any with strict=False) are initialised with `_init_weights`.
        """
        expected = self.state_dict()
        if device is None:
            device = next(
                (t.device for t in expected.values() if not t.is_meta), torch.device("cpu")
            )
        device = torch.device(device)
        state_dict = self._rename_checkpoint_keys(state_dict)
        state_dict, dropped, new_head = self._match_prefix(state_dict, set(expected))

        tied = self.tied_weights()
        ignored_missing = [re.compile(p) for p in self._keys_to_ignore_on_load_missing]
        ignored_unexpected = [re.compile(p) for p in self._keys_to_ignore_on_load_unexpected]
        prefix = self.base_model_prefix + "."
        missing, fresh = [], []
        for key in expected:
            if key in state_dict or key in tied:
                continue
            if any(p.search(key) for p in ignored_missing) or (
                new_head and not key.startswith(prefix)
            ):
                fresh.append(key)
            else:
                missing.append(key)
        unexpected = [
            k
            for k in state_dict
            if k not in expected and not any(p.search(k) for p in ignored_unexpected)
        ]
        mismatched = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in state_dict
            if k in expected and state_dict[k].shape != expected[k].shape
        ]
        if mismatched:
            raise ValueError(
                f"{source}: {len(mismatched)} tensor(s) have the wrong shape for this config:\n  "
                + "\n  ".join(sorted(mismatched))
            )
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys ({len(missing)}): " + ", ".join(sorted(missing)))
            if unexpected:
                parts.append(
                    f"unexpected keys ({len(unexpected)}): " + ", ".join(sorted(unexpected))
                )
            raise ValueError(
                f"{source}: checkpoint does not match {type(self).__name__}: "
                + "; ".join(parts)
                + ". Check that the config matches the weights, or pass strict=False."
            )
        if missing or unexpected:
            logger.warning(
                "%s: loading with strict=False; missing keys %s, unexpected keys %s",
                source,
                sorted(missing),
                sorted(unexpected),
            )
        if dropped:
            logger.info(
                "%s: ignoring %d tensor(s) of another head, e.g. %s",
                source,
                len(dropped),
                sorted(dropped)[0],
            )
        if fresh:
            logger.warning(
                "%s: %d tensor(s) not in the checkpoint are newly initialised: %s",
                source,
                len(fresh),
                sorted(fresh),
            )

        loaded = {}
        for key, value in state_dict.items():
            if key not in expected:
                continue
            like = expected[key]
            dtype = like.dtype if like.is_floating_point() and value.is_floating_point() else None
            loaded[key] = value.to(device=device, dtype=dtype)
        self.load_state_dict(loaded, strict=False, assign=True)
        self._materialize(device)
        self.tie_weights()

    @torch.no_grad()
    def _materialize(self, device: torch.device) -> None:
        """Give real storage to what is still on the meta device, then initialise it.

        Also moves any remaining tensor (non-persistent buffers) onto `device`.
        """
        for module in self.modules():
            tensors = {**module._parameters, **module._buffers}
            meta = [n for n, t in tensors.items() if t is not None and t.is_meta]
            if not meta:
                continue
            # _init_weights works per module: protect what the checkpoint supplied.
            kept = {
                n: t.detach().clone() for n, t in tensors.items() if t is not None and not t.is_meta
            }
            for name in meta:
                old = tensors[name]
                new = torch.empty(old.shape, dtype=old.dtype, device=device)
                if name in module._parameters:
                    module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
                else:
                    module._buffers[name] = new
            self._init_weights(module)
            for name, value in kept.items():
                getattr(module, name).copy_(value)
        self.to(device)

    # -- saving -------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike, *, tokenizer: Any = None) -> Path:
        """Write config.json and model.safetensors (and the tokenizer's files if given).

        Tied weights are written once, under their source name, as `transformers`
        expects. Files are written into a temporary folder beside `folder` and moved
        into place one by one, so a reader never sees a half-written file.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tied = self.tied_weights()
        tensors = {
            k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in tied
        }
        config = dataclasses.replace(self.config, extra=dict(self.config.extra))
        config.architectures = [type(self).__name__]
        config.dtype = _dtype_name(self.dtype)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".save-"))
        try:
            save_file(tensors, str(staging / SAFETENSORS_NAME), metadata={"format": "pt"})
            config.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            for path in staging.iterdir():
                os.replace(path, folder / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


def _override_config(config: EsmConfig, kwargs: dict[str, Any]) -> EsmConfig:
    """Apply (and remove from `kwargs`) the keyword arguments that are config fields."""
    names = {f.name for f in dataclasses.fields(config)} - {"extra"}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    if not overrides:
        return config
    data = config.to_dict()
    if "num_labels" in overrides and "id2label" not in overrides:
        # A new label count replaces the stored label names.
        data.pop("id2label", None)
        data.pop("label2id", None)
    return type(config).from_dict(data, **overrides)


def _read_weights(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """Read one weight file; corrupt files raise a ValueError naming the file."""
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state
