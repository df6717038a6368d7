"""GPU claims by lock file, checked without a GPU: device count and key are parameters."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from esmpipe.engine import device as device_module
from esmpipe.engine.device import claim_gpu, resolve_device

# Claims one of `argv[2]` GPUs with locks in `argv[1]`, prints it, holds it until stdin closes.
HOLDER = """
import sys
from esmpipe.engine.device import claim_gpu
claim = claim_gpu(int(sys.argv[2]), str, lock_dir=sys.argv[1], timeout=5)
print(claim.index, flush=True)
sys.stdin.read()
"""


def _hold_in_other_process(lock_dir: Path, count: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline())


def test_claims_get_different_gpus(tmp_path: Path) -> None:
    proc, held = _hold_in_other_process(tmp_path, 3)
    try:
        assert held == 0
        # flock locks belong to the open file description, so two claims within
        # one process exclude each other as claims from two processes do.
        first = claim_gpu(3, str, lock_dir=tmp_path, timeout=0)
        second = claim_gpu(3, str, lock_dir=tmp_path, timeout=0)
        assert (first.index, second.index) == (1, 2)
        assert first.path == tmp_path / "esmpipe-gpu-1.lock"
        with pytest.raises(TimeoutError, match="all 3 GPUs are held"):
            claim_gpu(3, str, lock_dir=tmp_path, timeout=0)
    finally:
        proc.communicate("")
    # The holder exited without releasing: the OS dropped its lock.
    assert claim_gpu(3, str, lock_dir=tmp_path, timeout=0).index == 0


def test_claim_waits_until_a_gpu_frees(tmp_path: Path, caplog) -> None:
    held = [claim_gpu(2, str, lock_dir=tmp_path, timeout=0) for _ in range(2)]
    with pytest.raises(TimeoutError):
        claim_gpu(2, str, lock_dir=tmp_path, poll=0.01, timeout=0.1)

    got: list[int] = []
    waiter = threading.Thread(
        target=lambda: got.append(claim_gpu(2, str, lock_dir=tmp_path, poll=0.01, timeout=10).index)
    )
    with caplog.at_level(logging.INFO, logger="esmpipe.engine.device"):
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive() and not got
        held[1].release()
        waiter.join(10)
    assert got == [1]
    assert sum("waiting" in r.message for r in caplog.records) == 1  # logged once, not per poll


def test_claim_keys_lock_files_by_uuid(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ESMPIPE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    uuids = {0: "GPU-aaaa", 1: "GPU-bbbb"}
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i])
    )
    # A process that sees the GPUs in the other order (CUDA_VISIBLE_DEVICES=1,0)
    # holds its index 0, GPU-bbbb: our index 0, GPU-aaaa, is still free (keyed by
    # index, both would have locked "0" and shared a GPU).
    other = claim_gpu(2, lambda i: uuids[1 - i])
    assert other.path.name == "esmpipe-gpu-GPU-bbbb.lock"
    claim = claim_gpu(2, timeout=0)
    assert claim.index == 0 and claim.path == tmp_path / "locks" / "esmpipe-gpu-GPU-aaaa.lock"
    claim.release()
    other.release()


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path: Path):
    """Pretend `n` GPUs are visible; lock files go to tmp_path."""
    monkeypatch.setenv("ESMPIPE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(device_module, "_CLAIM", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=None))
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def visible(n: int) -> list[int]:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        return current

    yield visible
    if device_module._CLAIM is not None:
        device_module._CLAIM.release()


def test_auto_claims_only_among_several_gpus(fake_cuda, tmp_path: Path) -> None:
    fake_cuda(1)
    assert resolve_device("auto") == torch.device("cuda")
    current = fake_cuda(2)
    for name in ("cpu", "cuda", "cuda:1"):
        assert resolve_device(name) == torch.device(name)
    assert not list(tmp_path.iterdir())  # one GPU or an explicit device: no lock

    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)  # the same claim, kept
    assert [p.name for p in tmp_path.iterdir()] == ["esmpipe-gpu-0.lock"]
    assert current == [0, 0]
