"""Cohort statistics and plots for the workflow report.

Counts per sample and for the whole cohort (input records, distinct sequences,
embedded, folded, high confidence, skipped by reason) and three pictures: the
pLDDT distribution per sample, pTM against pLDDT, and length against pLDDT.
High confidence follows the ESM Metagenomic Atlas: mean pLDDT > 70 and pTM > 0.7.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from esmpipe.io.tables import atomic_path, result_tables

COHORT = "cohort"
PLOTS = ("plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png")


def read_result(results: str | os.PathLike, name: str, columns: list[str]) -> pd.DataFrame | None:
    """A results table (see `result_tables`) or None if absent or stale."""
    path = result_tables(results).get(name)
    if path is None:
        return None
    dataset = ds.dataset(path, format="parquet")
    present = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=present).to_pandas()


def cohort_counts(
    proteins: pd.DataFrame,
    structures: pd.DataFrame | None,
    embeddings: pd.DataFrame | None,
    *,
    min_plddt: float = 70.0,
    min_ptm: float = 0.7,
) -> pd.DataFrame:
    """One row per sample plus a `cohort` row; counts of records and distinct sequences.

    `input_records` and `skipped_<reason>` count records; the other columns count
    distinct sequences (the cohort row does not double count a sequence that
    several samples share).
    """
    folded = set(structures["seq_hash"]) if structures is not None else set()
    embedded = set(embeddings["seq_hash"]) if embeddings is not None else set()
    confident: set[str] = set()
    if structures is not None and len(structures):
        mask = (structures["mean_plddt"] > min_plddt) & (structures["ptm"] > min_ptm)
        confident = set(structures.loc[mask, "seq_hash"])
    reasons = sorted(r for r in proteins["status"].dropna().unique() if r != "ok")

    def row(group: pd.DataFrame) -> dict:
        ok = set(group.loc[group["seq_hash"].notna(), "seq_hash"])
        counts = {
            "input_records": len(group),
            "ok_records": int((group["status"] == "ok").sum()),
            "distinct_sequences": len(ok),
            "embedded": len(ok & embedded),
            "folded": len(ok & folded),
            "high_confidence": len(ok & confident),
        }
        for reason in reasons:
            counts[f"skipped_{reason}"] = int((group["status"] == reason).sum())
        return counts

    rows = {name: row(group) for name, group in proteins.groupby("sample", sort=True)}
    rows[COHORT] = row(proteins)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "sample"
    return table.reset_index()


def _per_sample_plddt(proteins: pd.DataFrame, structures: pd.DataFrame) -> dict[str, list[float]]:
    pairs = proteins[["sample", "seq_hash"]].dropna().drop_duplicates()
    merged = pairs.merge(structures[["seq_hash", "mean_plddt"]], on="seq_hash")
    return {s: g["mean_plddt"].tolist() for s, g in merged.groupby("sample", sort=True)}


def write_report(
    results: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    min_plddt: float = 70.0,
    min_ptm: float = 0.7,
) -> dict[str, Path]:
    """Write `counts.tsv` and the three plots into `output_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proteins = read_result(results, "proteins", ["sample", "seq_hash", "status", "length"])
    if proteins is None:
        raise FileNotFoundError(f"no proteins table under {results}")
    structures = read_result(results, "structures", ["seq_hash", "length", "mean_plddt", "ptm"])
    embeddings = read_result(results, "embeddings", ["seq_hash"])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}

    counts = cohort_counts(proteins, structures, embeddings, min_plddt=min_plddt, min_ptm=min_ptm)
    paths["counts"] = out / "counts.tsv"
    with atomic_path(paths["counts"]) as tmp:
        counts.to_csv(tmp, sep="\t", index=False)

    have = structures is not None and len(structures) > 0
    if have and "length" not in structures.columns:
        lengths = proteins[["seq_hash", "length"]].dropna().drop_duplicates("seq_hash")
        structures = structures.merge(lengths, on="seq_hash", how="left")

    def save(fig, name: str) -> None:
        paths[name] = out / name
        with atomic_path(paths[name]) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    def empty(ax) -> None:
        ax.text(0.5, 0.5, "no structures (folding off or nothing folded)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.6 * proteins["sample"].nunique()), 4))
    if have:
        per_sample = _per_sample_plddt(proteins, structures)
        ax.boxplot(list(per_sample.values()), showfliers=True)
        ax.set_xticks(range(1, len(per_sample) + 1), list(per_sample), rotation=30, ha="right")
        ax.axhline(min_plddt, color="tab:red", lw=0.8, ls="--")
        ax.set_ylabel("mean pLDDT (0-100)")
        ax.set_ylim(0, 100)
        ax.set_title("pLDDT per sample (distinct folded sequences)")
    else:
        empty(ax)
    save(fig, "plddt_per_sample.png")

    for name, x, xlabel in (
        ("ptm_vs_plddt.png", "ptm", "pTM"),
        ("length_vs_plddt.png", "length", "length (residues)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 4))
        if have:
            ax.scatter(structures[x], structures["mean_plddt"], s=8, alpha=0.6)
            ax.axhline(min_plddt, color="tab:red", lw=0.8, ls="--")
            if x == "ptm":
                ax.axvline(min_ptm, color="tab:red", lw=0.8, ls="--")
                ax.set_xlim(0, 1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean pLDDT (0-100)")
            ax.set_ylim(0, 100)
        else:
            empty(ax)
        save(fig, name)
    return paths
