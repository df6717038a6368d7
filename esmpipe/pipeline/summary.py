"""The plain summary at the end of a workflow run, and the partial tables of a failed one.

Snakemake's own account of a failed run is hundreds of lines of job logs. What a
user wants is: per stage, how many jobs there were, which failed, why (the last
error line of the job's log) and where the log is. That is read from the working
directory after the run (plans, cache parts, ingest tables, logs), so it needs
nothing from Snakemake and says the same whichever executor ran the jobs.

With `partial: true`, the end of a run that left failed shards gathers the tables
of everything that did finish (`esmpipe gather --allow-missing`): the sequences of
failed shards get status `not_computed` and the path of the log that says why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from esmpipe.io.tables import STAGE_TABLES, atomic_path

SUMMARY_FILE = "logs/summary.txt"
LOG_PATTERN = "logs/{stage}/{key}/{shard}.log"  # the embed/fold rules' log
_ERROR_LINE = re.compile(r"(error|exception|killed|timeout|out of memory|cancelled)", re.I)


@dataclass
class Failure:
    job: str  # e.g. "fold 3f2a..." or "ingest sample_a"
    reason: str
    log: str | None


@dataclass
class StageSummary:
    stage: str
    jobs: int = 0
    done: int = 0
    failures: list[Failure] = field(default_factory=list)
    note: str = ""


def last_error(log: Path, lines: int = 200) -> str:
    """The most telling line of a job log: the last one that looks like an error."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "no log written (the job did not start, or was killed before it wrote one)"
    text = [t.strip() for t in text if t.strip()]
    if not text:
        return "empty log (killed before it wrote anything?)"
    for line in reversed(text):
        if _ERROR_LINE.search(line):
            return line[:300]
    return text[-1][:300]


def ingest_summary(samples: Iterable[str], workdir: Path) -> StageSummary:
    s = StageSummary("ingest")
    for sample in samples:
        s.jobs += 1
        if (workdir / "work" / "ingest" / f"{sample}.parquet").is_file():
            s.done += 1
        else:
            log = workdir / "logs" / "ingest" / f"{sample}.log"
            s.failures.append(Failure(f"ingest {sample}", last_error(log),
                                      str(log.relative_to(workdir)) if log.exists() else None))
    return s


def stage_summary(stage: str, workdir: Path) -> StageSummary:
    s = StageSummary(stage)
    manifest_path = workdir / "work" / "plan" / stage / "manifest.json"
    if not manifest_path.is_file():
        log = workdir / "logs" / "plan" / f"{stage}.log"
        s.note = "not planned" + (f": {last_error(log)} (log {log.relative_to(workdir)})"
                                  if log.exists() else "")  # fmt: skip
        return s
    manifest = json.loads(manifest_path.read_text())
    cache = workdir / manifest["cache_dir"]
    counts = manifest.get("counts", {})
    s.note = (f"{counts.get('cached', 0)} sequences cached, {counts.get('planned', 0)} to "
              f"compute, {counts.get('too_long', 0)} too long")  # fmt: skip
    for shard in manifest["shards"]:
        s.jobs += 1
        shard_id = shard["shard_id"]
        if (cache / f"{shard_id}.parquet").is_file():
            s.done += 1
            continue
        log = workdir / LOG_PATTERN.format(stage=stage, key=cache.name, shard=shard_id)
        partial = cache / f".{shard_id}.parquet.partial"
        reason = last_error(log)
        if partial.is_dir():
            chunks = len(list(partial.glob("chunk-*.parquet")))
            reason += f" ({chunks} finished batch(es) kept: a re-run resumes from them)"
        s.failures.append(Failure(f"{stage} {shard_id} ({shard['sequences']} sequences)", reason,
                                  str(log.relative_to(workdir)) if log.exists() else None))
    return s


def summarize(
    samples: Sequence[str], stages: Sequence[str], workdir: str | os.PathLike = "."
) -> list[StageSummary]:
    workdir = Path(workdir)
    out = [ingest_summary(samples, workdir)]
    out += [stage_summary(stage, workdir) for stage in stages]
    for table in ["proteins", *(STAGE_TABLES[s] for s in stages)]:
        path = workdir / "results" / table
        log = workdir / "logs" / "gather" / f"{table}.log"
        g = StageSummary(f"gather {table}", jobs=1, done=int(path.is_dir()))
        if not path.is_dir():
            reason = last_error(log) if log.exists() else ""
            if _ERROR_LINE.search(reason):
                g.failures.append(Failure(f"gather {table}", reason, str(log.relative_to(workdir))))
            else:
                g.note = "not gathered (what it needs did not finish)"
        out.append(g)
    return out


def format_summary(summaries: Sequence[StageSummary], *, ok: bool, partial: str = "") -> str:
    lines = ["esmpipe run summary: " + ("finished" if ok else "FAILED")]
    for s in summaries:
        state = f"{s.done}/{s.jobs} done" if s.jobs else "-"
        lines.append(f"  {s.stage:<20} {state}" + (f"; {s.note}" if s.note else ""))
        for f in s.failures:
            lines.append(f"    failed: {f.job}")
            lines.append(f"      why: {f.reason}")
            lines.append(f"      log: {f.log or '(none)'}")
    if partial:
        lines.append(partial)
    elif not ok:
        failed = sum(len(s.failures) for s in summaries)
        lines.append(
            f"  {failed} job(s) failed after their retries. Fix the cause and run the same "
            "command again (finished work is kept), or set `partial: true` to get the tables "
            "of everything that finished."
        )
    return "\n".join(lines) + "\n"


def write_summary(
    samples: Sequence[str],
    stages: Sequence[str],
    *,
    ok: bool,
    workdir: str | os.PathLike = ".",
    partial: str = "",
) -> str:
    """Write logs/summary.txt and return its text."""
    text = format_summary(summarize(samples, stages, workdir), ok=ok, partial=partial)
    path = Path(workdir) / SUMMARY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def gather_partial(
    stages: Sequence[str],
    ingest_list: str,
    *,
    workdir: str | os.PathLike = ".",
) -> str:
    """Gather the tables of everything that finished (`esmpipe gather --allow-missing`).

    Returns a line for the summary. Stages that were never planned are left out of
    the proteins table (their status columns stay empty).
    """
    workdir = Path(workdir)
    done: list[str] = []
    problems: list[str] = []

    def gather(args: list[str], log: Path) -> bool:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            result = subprocess.run(["esmpipe", "gather", *args], cwd=workdir, stdout=handle,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        if result.returncode != 0:
            problems.append(f"esmpipe gather {shlex.join(args)} failed (log {log})")
        return result.returncode == 0

    status_args: list[str] = []
    for stage in stages:
        table = STAGE_TABLES[stage]
        if not (workdir / "work" / "plan" / stage / "manifest.json").is_file():
            continue
        status = f"work/status/{table}.parquet"
        manifest = json.loads((workdir / "work" / "plan" / stage / "manifest.json").read_text())
        # `--log-pattern` fills in {stage} and {shard}; the cache key is this plan's.
        log_pattern = LOG_PATTERN.replace("{key}", Path(manifest["cache_dir"]).name)
        if gather(["--table", table, "--plan", f"work/plan/{stage}", "--output",
                   f"results/{table}", "--status-output", status, "--allow-missing",
                   "--log-pattern", log_pattern, "--reuse-dir", f"work/gathered/{table}"],
                  workdir / "logs" / "gather" / f"{table}.partial.log"):  # fmt: skip
            status_args += ["--status", f"{stage}={status}"]
            done.append(f"results/{table}")
    existing = [p for p in (workdir / ingest_list).read_text().split() if (workdir / p).is_file()]
    if existing:
        partial_list = workdir / "work" / "ingest" / "list.partial.txt"
        with atomic_path(partial_list) as tmp:
            tmp.write_text("".join(f"{p}\n" for p in existing))
        if gather(["--table", "proteins", "--ingest-list", str(partial_list.relative_to(workdir)),
                   *status_args, "--output", "results/proteins", "--allow-missing",
                   "--reuse-dir", "work/gathered/proteins"],
                  workdir / "logs" / "gather" / "proteins.partial.log"):  # fmt: skip
            done.append("results/proteins")
    line = "  partial tables (`partial: true`): " + (", ".join(done) or "none")
    if done:
        line += ("; sequences of failed shards have status not_computed and a `log` column "
                 "naming the log that says why")  # fmt: skip
    for p in problems:
        line += f"\n    {p}"
    return line
