"""Chunked application of a row-wise function, so that pair updates stay O(L^2) in memory.

Triangle attention over the rows of a [B, L, L, C_z] pair tensor holds
attention logits of shape [B, L, H, L, L] (L^3) if every row runs at once and
the attention kernel materialises its logits (the reference always does, and so
does PyTorch's fallback kernel). Running `chunk_size` rows at a time bounds that
to [B, chunk, H, L, L], and the pair transition's and the multiplicative
update's temporaries to [B, chunk, L, *]; the result is the same up to
floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def map_row_chunks(
    fn: Callable[..., torch.Tensor],
    chunked: Sequence[torch.Tensor],
    chunk_size: int | None,
    dim: int,
    *shared: torch.Tensor,
) -> torch.Tensor:
    """Apply `fn(*chunks, *shared)` on slices of `chunked` along `dim` and reassemble.

    Args:
        fn: a function whose output keeps `dim` aligned with its chunked inputs
            (row `i` of the output depends only on row `i` of the chunked inputs).
        chunked: tensors sliced along `dim`; a tensor of size 1 there broadcasts
            and is passed whole to every call.
        chunk_size: rows per call; None (or a size covering every row) calls `fn` once.
        dim: the dimension to chunk, counted the same way for every tensor
            (use negative dims when the tensors differ in rank).
        shared: tensors passed unchanged to every call.

    Returns:
        The output of `fn` as if applied to all rows at once.
    """
    sizes = {t.shape[dim] for t in chunked if t.shape[dim] != 1}
    if len(sizes) > 1:
        raise ValueError(f"chunked tensors disagree on dimension {dim}: {sorted(sizes)}")
    n = sizes.pop() if sizes else 1
    if chunk_size is None or chunk_size >= n:
        return fn(*chunked, *shared)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    out: torch.Tensor | None = None
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        pieces = [t if t.shape[dim] == 1 else t.narrow(dim, start, end - start) for t in chunked]
        y = fn(*pieces, *shared)
        if out is None:
            # Preallocating the result keeps the peak at one output plus one chunk,
            # where torch.cat would hold every chunk and the output together.
            shape = list(y.shape)
            shape[dim] = n
            out = y.new_empty(shape)
        out.narrow(dim, start, end - start).copy_(y)
    assert out is not None
    return out
