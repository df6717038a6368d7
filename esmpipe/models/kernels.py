"""Linear layers of the packed inference path (`EsmModel.forward_packed`).

On the CPU in float32 the projections go through oneDNN
(`torch.ops.mkldnn._linear_pointwise`, the kernel torch's own compiler uses for
CPU linear layers) instead of MKL's addmm that `F.linear` calls: on the 2-core
AVX-512 CPU of issue 7 it ran the four projections of an ESM-2 layer 20-30%
faster at 3,800 tokens (hidden sizes 320, 480, 640), and it applies the exact
(erf) GELU while the output is still in cache. Results stay within fp32
rounding of `F.linear` (the summation order differs, as between any two GEMMs).

Everywhere else (autograd, other devices or dtypes, a torch without oneDNN)
this is `F.linear` followed by `F.gelu`.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F


@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN and its fused linear operator."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
    except (AttributeError, RuntimeError):
        return False


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 2
        # the operator has no backward
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and onednn_available()
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, gelu: bool = False
) -> torch.Tensor:
    """x [T, C_in] @ weight [C_out, C_in]^T + bias [C_out] -> [T, C_out], then the exact
    GELU if `gelu`."""
    if _use_onednn(x, weight):
        if gelu:
            # "none": the erf GELU (not the tanh approximation)
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [None], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y
