"""The packed path's linear layers equal F.linear (+ exact GELU) within fp32 rounding."""

import pytest
import torch
from torch.nn import functional as F

from esmpipe.models import kernels


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_f_linear(gelu: bool, bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=gen)
    weight = torch.randn(96, 64, generator=gen) * 0.1
    b = torch.randn(96, generator=gen) if bias else None
    expected = F.linear(x.double(), weight.double(), None if b is None else b.double())
    if gelu:
        expected = F.gelu(expected)
    with torch.inference_mode():
        got = kernels.linear(x, weight, b, gelu=gelu)
    assert got.dtype == torch.float32 and got.shape == (300, 96)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_onednn_used_for_cpu_fp32_inference_only() -> None:
    x, weight = torch.randn(8, 4), torch.randn(3, 4, requires_grad=True)
    if not kernels.onednn_available():
        pytest.skip("this torch has no oneDNN")
    with torch.inference_mode():
        assert kernels._use_onednn(x, weight)
        assert not kernels._use_onednn(x.double(), weight.double())
    # with autograd on, the F.linear path (the oneDNN operator has no backward)
    assert not kernels._use_onednn(x, weight)
    y = kernels.linear(x, weight, gelu=True)
    y.sum().backward()
    assert weight.grad is not None
