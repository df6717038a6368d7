"""Running the workflow and the `esmpipe` command from tests, as a user would.

Snakemake runs in a subprocess with the working directory set to a copy of the
bundled config (so the demo's relative paths hold). `esmpipe` must be on PATH
for the rules; when the package is not installed (a plain checkout), a small
launcher for `esmpipe.cli.main` is written instead, with the checkout on
PYTHONPATH so that every job, local or on SLURM, imports the same code.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "profiles"


def esmpipe_env(tmp: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which `esmpipe`, `snakemake` and this checkout are found."""
    env = dict(base or os.environ)
    bindir = Path(sys.executable).parent
    paths = [str(bindir)]
    if not (bindir / "esmpipe").exists():
        launcher_dir = tmp / "bin"
        launcher_dir.mkdir(parents=True, exist_ok=True)
        launcher = launcher_dir / "esmpipe"
        launcher.write_text(
            f"#!{sys.executable}\nimport sys\n\nfrom esmpipe.cli import main\n\nsys.exit(main())\n"
        )
        launcher.chmod(0o755)
        paths.insert(0, str(launcher_dir))
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    # Two cores are shared by everything here; one thread per job keeps jobs from fighting.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def prepare_demo(workdir: Path) -> Path:
    """A working directory holding a copy of config/ (demo cohort included)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    return workdir


def snakemake(workdir: Path, *args: str, env: dict[str, str], timeout: float = 600,
              check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake -s <repo>/workflow/Snakefile ARGS` in `workdir`; output on failure."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        logs = []
        for log in sorted((workdir / "logs").rglob("*.log")) if (workdir / "logs").exists() \
                else []:
            logs.append(f"--- {log.relative_to(workdir)}\n{log.read_text()[-3000:]}")
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode})\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-8000:]}\n" + "\n".join(logs)
        )
    return result


def esmpipe(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["esmpipe", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def fasta_records(path: Path) -> int:
    """Number of records (header lines) in a plain or gzip FASTA file."""
    with path.open("rb") as handle:
        gz = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt") as handle:
        return sum(1 for line in handle if line.startswith(">"))


def local_run_args(configfile: str = "config/demo.yaml") -> list[str]:
    return ["--profile", str(PROFILES / "local"), "--configfile", configfile, "--cores", "2"]


_DEMO: dict[str, Path] = {}


def demo_run(tmp_factory, env: dict[str, str]) -> Path:
    """A working directory in which the whole demo ran locally, made once per session
    (tests in tests/workflow and tests/slurm share it and copy it before changing it)."""
    if "dir" not in _DEMO:
        workdir = prepare_demo(tmp_factory.mktemp("demo"))
        snakemake(workdir, *local_run_args(), env=env)
        _DEMO["dir"] = workdir
    return _DEMO["dir"]


def copy_run(source: Path, target: Path, *, hard_links: bool = False) -> Path:
    """A copy of a run's working directory, timestamps and Snakemake metadata included.

    With `hard_links`, files hard-linked to each other in `source` (the gathered tables
    and work/gathered/) are linked the same way in the copy, as in the run itself."""
    copied: dict[tuple[int, int], str] = {}

    def copy(src: str, dst: str) -> str:
        st = os.stat(src)
        if hard_links and st.st_nlink > 1:
            first = copied.setdefault((st.st_dev, st.st_ino), dst)
            if first != dst:
                os.link(first, dst)
                return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=copy, dirs_exist_ok=False)
    return target


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table Snakemake prints before running: rule -> jobs."""
    counts: dict[str, int] = {}
    lines = output.split("Job stats:", 1)[1].splitlines() if "Job stats:" in output else []
    for line in lines[3:]:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        counts[fields[0]] = int(fields[1])
    counts.pop("total", None)
    return counts
