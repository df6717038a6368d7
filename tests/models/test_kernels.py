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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rotary_equals_apply_rotary(dtype: torch.dtype) -> None:
    from esmpipe.models import EsmConfig
    from esmpipe.models.rotary import EsmRotaryEmbedding, apply_rotary, apply_rotary_packed

    config = EsmConfig(vocab_size=33, hidden_size=64, num_attention_heads=4,
                       num_hidden_layers=1, intermediate_size=128,
                       position_embedding_type="rotary")  # fmt: skip
    rotary = EsmRotaryEmbedding(config)
    tokens, heads, dim = 50, 4, 16
    gen = torch.Generator().manual_seed(1)
    qk = torch.randn(tokens, 3, heads, dim, generator=gen).to(dtype)[:, :2]  # strided, as packed
    positions = torch.arange(tokens) % 17
    cos, sin = rotary(qk, positions)
    got = apply_rotary_packed(qk, cos, sin)
    # [1, H, T, D], the padded path's layout
    q, k = (qk[:, i].transpose(0, 1)[None] for i in (0, 1))
    want_q, want_k = apply_rotary(q, k, cos[None], sin[None])
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got[:, 0], want_q[0].transpose(0, 1), atol=tol, rtol=tol)
    torch.testing.assert_close(got[:, 1], want_k[0].transpose(0, 1), atol=tol, rtol=tol)
    # [T, H, D] alone, with the query scale folded in (the reference scales, then rotates)
    scaled = apply_rotary_packed(qk[:, 0], cos, sin, scale=0.25)
    want_scaled, _ = apply_rotary(q * 0.25, k, cos[None], sin[None])
    torch.testing.assert_close(scaled, want_scaled[0].transpose(0, 1), atol=tol, rtol=tol)
