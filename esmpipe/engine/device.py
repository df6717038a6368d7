"""Device and precision policy for inference (kept out of the models, which are pure).

- `--device auto`: the first CUDA device when one is available, else the CPU.
- `--dtype auto`: bfloat16 on a CUDA device that supports it, float16 on an
  older one, float32 on the CPU (reduced precision on CPU is slow and, for
  half, unsupported by many kernels).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` to a torch.device; ValueError if unusable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` or a dtype name to a torch dtype for `device`."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"--dtype {name!r}: expected auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_fold_dtypes(
    name: str, device: torch.device
) -> tuple[torch.dtype, torch.dtype]:
    """(stem dtype, trunk dtype) for `esmpipe fold --dtype name` on `device`.

    `auto` on CUDA runs the ESM-2 stem in float16 and the folding trunk in
    float32, the precision ESMFold was published with (the original code always
    halves its 3B-parameter stem; the trunk's pair updates need fp32 range).
    `auto` on the CPU is float32 throughout; an explicit dtype applies to both.
    """
    if name == "auto":
        return (torch.float16, torch.float32) if device.type == "cuda" else (torch.float32,) * 2
    dtype = resolve_dtype(name, device)
    return dtype, dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_device(device: torch.device) -> str:
    """`cpu`, or `cuda:N (GPU name)` for provenance metadata."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def is_oom(err: BaseException) -> bool:
    """Whether an exception is a device out-of-memory error."""
    return isinstance(err, torch.cuda.OutOfMemoryError)


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the allocator after an OOM, before a smaller retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
