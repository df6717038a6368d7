"""Device and dtype policy."""

from __future__ import annotations

import pytest
import torch

from esmpipe.engine import device as device_module
from esmpipe.engine.device import (
    describe_device,
    is_oom,
    resolve_device,
    resolve_dtype,
    resolve_fold_dtypes,
)


def test_resolve_device(tmp_path, monkeypatch) -> None:
    # On a multi-GPU machine `auto` claims a GPU: keep that lock out of the shared folder.
    monkeypatch.setenv("ESMPIPE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(device_module, "_CLAIM", None)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_resolve_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("float8", cpu)
    assert describe_device(cpu) == "cpu"


def test_is_oom() -> None:
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert not is_oom(RuntimeError("x"))


def test_fold_precision_policy() -> None:
    # auto on CUDA: fp16 stem, fp32 trunk (ESMFold's published setup); no GPU needed
    # to check the policy itself.
    assert resolve_fold_dtypes("auto", torch.device("cuda")) == (torch.float16, torch.float32)
    assert resolve_fold_dtypes("auto", torch.device("cpu")) == (torch.float32, torch.float32)
    assert resolve_fold_dtypes("bfloat16", torch.device("cpu")) == (torch.bfloat16,) * 2
