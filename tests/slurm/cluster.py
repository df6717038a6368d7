"""A throw-away single-node SLURM cluster for tests (Debian's slurm-wlm and munge).

State, spool, pid and log files live in one temporary folder; munged runs as the
`munge` user with its own key and socket in a folder of its own; slurmctld and
slurmd listen on free ports. The node declares one GPU (`Gres=gpu:1`, backed by
/dev/null with `AutoDetect=off`) so that GPU requests are scheduled and recorded.
No accounting database: `squeue` and `scontrol` are the only job records.

NOTE: slurm.conf and gres.conf are written to /etc/slurm (the default location),
not to a folder named by SLURM_CONF: the Snakemake jobstep plugin removes every
SLURM_* variable but the job's ids before its nested `srun`, so a job's `srun`
finds the cluster only at the default path. A slurm.conf found there that this
helper did not write is never overwritten, and both files are removed on stop.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
CONF_DIR = Path("/etc/slurm")
MARKER = "# written by esmpipe's test cluster (tests/slurm/cluster.py); removed when it stops"


class ClusterError(RuntimeError):
    """The cluster could not be started; the message carries the daemons' logs."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 2048


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env()` is the environment for clients."""

    def __init__(self, root: Path, partition: str = "test") -> None:
        self.root = root
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]  # `hostname -s`
        self.conf = CONF_DIR / "slurm.conf"
        self.gres_conf = CONF_DIR / "gres.conf"
        # munged runs as `munge`, which cannot enter pytest's 0700 folders: its folder
        # is a separate one directly under the system temp folder.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="esmpipe-munge-"))
        self.munge_socket = self.munge_dir / "munge.socket"
        self._pids: dict[str, Path] = {}
        self._written: list[Path] = []

    def missing_tools(self) -> list[str]:
        return [tool for tool in TOOLS if shutil.which(tool) is None]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SLURM_CONF", None)  # the default path, as every job's srun sees it
        return env

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env(), capture_output=True, text=True, check=check,
                              timeout=60)

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        folder = self.munge_dir
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path in (folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        folder.chmod(0o711)  # clients must reach the socket; only munge may list or write
        pid = folder / "munged.pid"
        self._daemon(
            "munged",
            ["runuser", "-u", "munge", "--", shutil.which("munged"),
             f"--socket={self.munge_socket}",
             f"--key-file={key}", f"--pid-file={pid}", f"--log-file={folder / 'munged.log'}",
             f"--seed-file={folder / 'munged.seed'}"],
            pid,
        )
        self._wait(lambda: self.munge_socket.exists(), "munged socket", folder / "munged.log")

    def _write_config(self) -> None:
        for path in (self.conf, self.gres_conf):
            if path.exists() and MARKER not in path.read_text():
                raise ClusterError(f"{path} exists and was not written by this test helper; "
                                   "move it away to run the SLURM tests")
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        self._written = [self.conf, self.gres_conf]
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            "\n".join(
                [
                    MARKER,
                    "ClusterName=esmpipetest",
                    f"SlurmctldHost={self.host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    # Finished jobs stay visible to squeue/scontrol (no accounting here).
                    "MinJobAge=900",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "GresTypes=gpu",
                    f"NodeName={self.host} CPUs={cpus} RealMemory={_memory_mb()} Gres=gpu:1 "
                    "State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes={self.host} Default=YES "
                    "MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # A GPU needs a device file to be schedulable; any existing file does here.
        self.gres_conf.write_text(
            f"{MARKER}\nAutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n"
        )

    def _daemon(self, name: str, argv: list[str], pid_file: Path) -> None:
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise ClusterError(f"{name} failed to start ({result.returncode}): "
                               f"{result.stdout}{result.stderr}{self.logs()}")
        self._pids[name] = pid_file

    def _wait(self, ready, what: str, log: Path | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        extra = log.read_text() if log and log.exists() else ""
        raise ClusterError(f"timed out waiting for {what}\n{extra}{self.logs()}")

    def node_state(self) -> str:
        result = self._run("sinfo", "-h", "-N", "-n", self.host, "-o", "%T", check=False)
        return result.stdout.strip()

    def start(self) -> SlurmCluster:
        missing = self.missing_tools()
        if missing:
            raise ClusterError(f"SLURM tools missing: {', '.join(missing)} "
                               "(apt-get install slurm-wlm munge)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_config()
        self._daemon("slurmctld", [shutil.which("slurmctld")], self.root / "slurmctld.pid")
        self._daemon("slurmd", [shutil.which("slurmd")], self.root / "slurmd.pid")
        self._wait(lambda: self.node_state() == "idle", "the node to become idle")
        return self

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their pid files), newest first."""
        for name in reversed(list(self._pids)):
            pid_file = self._pids[name]
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 15)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.2)
        self._pids.clear()
        shutil.rmtree(self.munge_dir, ignore_errors=True)
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written = []

    def logs(self) -> str:
        parts = []
        for path in (self.root / "slurmctld.log", self.root / "slurmd.log",
                     self.munge_dir / "munged.log"):
            name = path.name
            if path.exists():
                tail = "\n".join(path.read_text().splitlines()[-30:])
                parts.append(f"\n--- {name} (tail)\n{tail}")
        return "".join(parts)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers, as `scontrol show job -o` key=value dicts."""
        out = self._run("scontrol", "show", "job", "-o", "--details").stdout
        jobs = []
        for line in out.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            job: dict[str, str] = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    job[key] = value
            jobs.append(job)
        return jobs
