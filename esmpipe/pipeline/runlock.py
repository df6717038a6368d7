"""Stale Snakemake locks after a killed run, removed when their run is provably gone.

Snakemake locks its working directory (`.snakemake/locks/`) while it runs; a run
killed with SIGKILL, or whose node died, leaves the lock behind and the next run
refuses to start until `snakemake --unlock`. A killed run must be re-run with the
same command, so the workflow records which process holds the lock (`onstart`,
after Snakemake took it) and, when the next run starts on the same host and that
process no longer exists, removes the stale lock. A lock held by a live run, or
taken on another host, is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

OWNER_FILE = ".snakemake/esmpipe-lock-owner.json"
LOCKS = ".snakemake/locks"


def record_owner(workdir: str | os.PathLike = ".") -> None:
    """Note that this process (on this host) holds the working directory's lock."""
    path = Path(workdir) / OWNER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    tmp.replace(path)


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"snakemake" in cmdline  # a reused pid is someone else's


def remove_stale_locks(workdir: str | os.PathLike = ".") -> bool:
    """Remove the locks if the run that took them is gone; returns whether it did."""
    workdir = Path(workdir)
    locks = workdir / LOCKS
    owner_file = workdir / OWNER_FILE
    if not locks.is_dir() or not any(locks.iterdir()) or not owner_file.is_file():
        return False
    try:
        owner = json.loads(owner_file.read_text())
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid() or _alive(pid):
        return False
    shutil.rmtree(locks, ignore_errors=True)
    owner_file.unlink(missing_ok=True)
    return True
