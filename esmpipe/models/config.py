"""`EsmConfig`: a dataclass mirroring the `config.json` of an ESM checkpoint.

One flat dataclass for the ESM-1b / ESM-2 language models; the folding head's
nested `esmfold_config` is parsed by `esmpipe.models.esmfold.config.EsmFoldConfig`
(imported only when `is_folding_model` is true, so embedding-only users never
import it). Keys we do not know (published configs carry bookkeeping such as
`transformers_version` or `_name_or_path`) are kept in `extra` and written back
unchanged, so a config survives a round trip through either library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"

# The ESM-2 alphabet (33 tokens); the folding model needs it to map its own
# residue indices onto the language model's vocabulary.
ESM2_VOCAB: tuple[str, ...] = (
    *("<cls>", "<pad>", "<eos>", "<unk>"),
    *"LAGVSERTIDPKQNFYMHWCXBUZO.-",
    *("<null_1>", "<mask>"),
)

_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclass
class EsmConfig:
    """Configuration of an ESM model, field for field as in `config.json`.

    Classification heads read `num_labels` (derived from `id2label` when that is
    given), `problem_type` and `classifier_dropout`.
    """

    vocab_size: int | None = None
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 1026
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    rope_theta: float = 10000.0
    emb_layer_norm_before: bool | None = None
    token_dropout: bool = False
    is_folding_model: bool = False
    esmfold_config: Any = None
    vocab_list: list[str] | None = None
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = 2
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    classifier_dropout: float | None = None
    architectures: list[str] | None = None
    model_type: str = "esm"
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model_type != "esm":
            raise ValueError(
                f"model_type must be 'esm', got {self.model_type!r}: this is not an ESM checkpoint"
            )
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.vocab_size is not None and (
            not isinstance(self.vocab_size, int) or self.vocab_size <= 0
        ):
            raise ValueError(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.position_embedding_type not in ("absolute", "rotary"):
            raise ValueError(
                "position_embedding_type must be 'absolute' or 'rotary', "
                f"got {self.position_embedding_type!r}"
            )
        if (
            self.position_embedding_type == "rotary"
            and (self.hidden_size // self.num_attention_heads) % 2
        ):
            raise ValueError(
                "hidden_size / num_attention_heads must be even for position_embedding_type "
                f"'rotary', got head size {self.hidden_size // self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("initializer_range", "layer_norm_eps", "rope_theta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if (
                value is not None
                and self.vocab_size is not None
                and not 0 <= value < self.vocab_size
            ):
                raise ValueError(f"{name} ({value}) must lie in [0, vocab_size={self.vocab_size})")
        if self.problem_type is not None and self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(
                f"problem_type must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}"
            )
        self._set_labels()
        # NOTE: the reference resets vocab_list and esmfold_config to None unless
        # is_folding_model; we keep what the file says, so it round-trips unchanged.
        if self.vocab_list is not None:
            self.vocab_list = list(self.vocab_list)
        if self.is_folding_model:
            # Lazy: the folding package is only needed for folding checkpoints.
            from esmpipe.models.esmfold.config import EsmFoldConfig

            if self.esmfold_config is None:
                self.esmfold_config = EsmFoldConfig.from_dict({})
            elif isinstance(self.esmfold_config, dict):
                self.esmfold_config = EsmFoldConfig.from_dict(self.esmfold_config)
            if self.vocab_list is None:
                self.vocab_list = list(ESM2_VOCAB)

    def _set_labels(self) -> None:
        # `transformers` derives num_labels from id2label; JSON turns the int keys into strings.
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        if not isinstance(self.num_labels, int) or self.num_labels <= 0:
            raise ValueError(f"num_labels must be a positive integer, got {self.num_labels!r}")
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- dict / JSON --------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> EsmConfig:
        """Build a config from a `config.json` dict; unknown keys go to `extra`."""
        data = {**data, **overrides}
        # NOTE: transformers < 5 writes `torch_dtype`, newer versions `dtype`; we keep one field.
        if "torch_dtype" in data:
            torch_dtype = data.pop("torch_dtype")
            data.setdefault("dtype", torch_dtype)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        extra.update(data.get("extra") or {})
        if "model_type" in data and data["model_type"] != "esm":
            raise ValueError(
                f"model_type is {data['model_type']!r}, expected 'esm': "
                "this config is not an ESM model"
            )
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The `config.json` dict; `transformers.EsmConfig` reads it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "esmfold_config" and value is not None and not isinstance(value, dict):
                value = value.to_dict()
            elif f.name == "id2label":
                value = {str(k): v for k, v in value.items()}
            elif isinstance(value, dict | list):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        # num_labels is derived from id2label on reading; writing both would be redundant.
        del out["num_labels"]
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> EsmConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
    ) -> EsmConfig:
        """Read `config.json` from a local folder, a JSON file or a hub id."""
        from esmpipe.models.hub import resolve_file

        if Path(name_or_path).is_file():
            return cls.from_json_file(name_or_path)
        path = resolve_file(
            name_or_path,
            CONFIG_NAME,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        if path is None:
            raise FileNotFoundError(f"{name_or_path}: no {CONFIG_NAME} found")
        return cls.from_json_file(path)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `config.json` into `folder` (created if needed); returns the file path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / CONFIG_NAME
        write_text_atomic(target, self.to_json_string())
        return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
