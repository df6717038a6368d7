"""The ESM family in pure PyTorch, following the Hugging Face Transformers API.

Names are resolved lazily so that importing a light submodule (for example
`esmpipe.models.esmfold.residue_constants`) does not import torch, and so that
embedding-only users never import the folding code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EsmConfig": "esmpipe.models.config",
    "EsmTokenizer": "esmpipe.models.tokenizer",
    "EsmPreTrainedModel": "esmpipe.models.pretrained",
    "EsmModel": "esmpipe.models.modeling_esm",
    "EsmForMaskedLM": "esmpipe.models.modeling_esm",
    "EsmForSequenceClassification": "esmpipe.models.modeling_esm",
    "EsmForTokenClassification": "esmpipe.models.modeling_esm",
    "EsmForProteinFolding": "esmpipe.models.esmfold.modeling_esmfold",
}

__all__ = [
    "EsmConfig",
    "EsmForMaskedLM",
    "EsmForProteinFolding",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmModel",
    "EsmPreTrainedModel",
    "EsmTokenizer",
]

if TYPE_CHECKING:  # pragma: no cover
    from esmpipe.models.config import EsmConfig
    from esmpipe.models.esmfold.modeling_esmfold import EsmForProteinFolding
    from esmpipe.models.modeling_esm import (
        EsmForMaskedLM,
        EsmForSequenceClassification,
        EsmForTokenClassification,
        EsmModel,
    )
    from esmpipe.models.pretrained import EsmPreTrainedModel
    from esmpipe.models.tokenizer import EsmTokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'esmpipe.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
