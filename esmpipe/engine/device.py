"""Device and precision policy for inference (kept out of the models, which are pure).

- `--device auto`: the CPU without CUDA; the one CUDA device when one is
  visible (under SLURM, the allocated GPU); with several visible, a GPU that no
  other esmpipe process holds, claimed for this process's lifetime (see
  `claim_gpu`), so that Snakemake jobs run with `--resources gpu=N` each get
  their own GPU instead of all sharing device 0.
- `--dtype auto`: bfloat16 on a CUDA device that supports it, float16 on an
  older one, float32 on the CPU (reduced precision on CPU is slow and, for
  half, unsupported by many kernels).
- `keep_freed_memory`: on the CPU, glibc's malloc is told to keep the memory
  that large tensors free for reuse (fold; see there). `release_free_memory`:
  the opposite trade, free heap pages handed back between batches (embed).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_CLAIM: GpuClaim | None = None  # held for the process's lifetime: closing it frees the GPU


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` to a torch.device; ValueError if unusable here.

    `auto` with several visible GPUs claims a free one (`claim_gpu`), waiting
    while all are held; an explicit device or a single visible GPU takes no lock.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 1:
            return torch.device("cuda")
        global _CLAIM
        if _CLAIM is None:
            _CLAIM = claim_gpu(count)
        # Make the claimed GPU current too, so that calls without a device
        # (empty_cache, is_bf16_supported) neither touch nor measure GPU 0.
        torch.cuda.set_device(_CLAIM.index)
        return torch.device("cuda", _CLAIM.index)
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


@dataclass
class GpuClaim:
    """An exclusive flock on one GPU's lock file; the OS drops it when the process
    exits, or `release()` does. Keep the object referenced while using the GPU."""

    index: int
    path: Path
    file: IO[bytes]

    def release(self) -> None:
        self.file.close()


def gpu_key(index: int) -> str:
    """The GPU's UUID (the same under any CUDA_VISIBLE_DEVICES order), else its index."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid) if uuid else str(index)


def claim_gpu(
    count: int,
    key: Callable[[int], str] = gpu_key,
    *,
    lock_dir: str | os.PathLike | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
) -> GpuClaim:
    """Claim the first of GPUs 0..count-1 whose lock no other process holds.

    Lock files are `<lock_dir>/esmpipe-gpu-<key>.lock`, lock_dir defaulting to
    $ESMPIPE_GPU_LOCK_DIR, else the system temp folder. When every GPU is held,
    poll every `poll` seconds until one frees (TimeoutError after `timeout`
    seconds; None waits for ever).
    """
    folder = Path(lock_dir or os.environ.get("ESMPIPE_GPU_LOCK_DIR") or tempfile.gettempdir())
    paths = [folder / _lock_name(key(i)) for i in range(count)]
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = False
    while True:
        for index, path in enumerate(paths):
            file = _open_lock(path)
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                continue
            log.info("claimed GPU cuda:%d (lock %s)", index, path)
            return GpuClaim(index, path, file)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"all {count} GPUs are held by other processes (locks in {folder})")
        if not waiting:
            log.info("all %d GPUs are held by other esmpipe processes; waiting for one "
                     "(locks in %s)", count, folder)  # fmt: skip
            waiting = True
        time.sleep(poll)


def _lock_name(key: str) -> str:
    return "esmpipe-gpu-" + re.sub(r"[^\w.-]", "_", key) + ".lock"


def _open_lock(path: Path) -> IO[bytes]:
    # Read-only suffices for flock, so a lock file another user created still works.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666), "rb")
    except OSError as err:
        raise ValueError(
            f"GPU lock file {path}: {err.strerror}; set ESMPIPE_GPU_LOCK_DIR to a writable folder"
        ) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` or a dtype name to a torch dtype for `device`."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"--dtype {name!r}: expected auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_fold_dtypes(name: str, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
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


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of handing it back to the kernel.

    By default glibc serves every allocation above 32 MiB (its largest mmap
    threshold) with a fresh mmap and unmaps it on free; the folding trunk
    allocates and frees [L, L, 4 * C_z] temporaries (92 MiB at L = 300) dozens of
    times per block, and each fresh mapping is zero-filled by the kernel page by
    page on first touch. Measured on the issue's CPU run (one thread, 16
    proteins): 26 of 140 CPU seconds were system time, nearly all page faults.
    With mmap off (`M_MMAP_MAX` 0) and the heap never trimmed
    (`M_TRIM_THRESHOLD` at its maximum) large blocks come from the heap and are
    reused: the same run's page faults drop about 5x. The process keeps its peak
    memory until it exits, which suits a job that folds one shard and ends.
    Process-wide; meant for a command's start on the CPU. False where the C
    library has no `mallopt` (musl, macOS): nothing is changed there.
    """
    mallopt = _libc("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc `malloc_trim(0)`).

    For the embedding engine on the CPU, after each batch: glibc raises its mmap
    threshold each time it frees a large mapped block (up to 32 MiB), so after the
    first layer the packed forward's activations ([T, C] to [T, 4C] float32, 5-30
    MiB at 3,000-4,000 tokens) come from the heap. Their sizes change from batch to
    batch with the token count, a freed block seldom fits the next request, and the
    heap grows with free holes that stay resident. Measured (issue 7,
    esm2_t12_35M, 60 proteins, glibc 2.36): the heap reached 313 MiB with 127 MiB
    in use, and peak RSS grew batch after batch (709-773 MiB against 557 MiB with
    every large block mmapped, which cost 12-20% more CPU time in page faults).
    Trimming after each batch returns the free pages of every arena (the holes
    inside the heap too, by madvise): peak 669-682 MiB at the same CPU time.
    Process-wide and harmless: only memory that is already free is released.
    False where the C library has no `malloc_trim` (musl, macOS).
    """
    trim = _libc("malloc_trim", (ctypes.c_size_t,))
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _libc(name: str, argtypes: tuple) -> Callable[..., int] | None:
    """A function of the C library returning int, or None where it has none."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function
