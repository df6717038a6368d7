"""Cohort statistics and plots for the workflow report.

Counts per sample and for the whole cohort (input records, distinct sequences,
embedded, folded, high confidence, confident records, skipped by reason; flagged
structures when the structures table has `flags`; contigs and genes when
`results/contigs` exists) and pictures: the pLDDT distribution per sample, pTM
against pLDDT, length against pLDDT, confident hits per sample, a PCA map of the
cohort's embeddings coloured by sample, and the language-model scores
(`mean_log_prob`, `pseudo_perplexity`) when the embed stage computed them.
High confidence follows the ESM Metagenomic Atlas: mean pLDDT > 70 and pTM > 0.7.

Per sample the record counts add up: `input_records` = `ok_records` + the
`skipped_<reason>` columns; and `contigs` = the `contigs_<status>` columns.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from esmpipe.io.tables import atomic_path, result_tables
from esmpipe.status import OK

COHORT = "cohort"
PLOTS = ("plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png",
         "hits_per_sample.png", "embedding_pca.png", "lm_scores.png")
LM_SCORES = ("mean_log_prob", "pseudo_perplexity")
# Points of the embedding map at most (a uniform subsample beyond).
PCA_MAX_POINTS = 20000


def read_result(results: str | os.PathLike, name: str, columns: list[str]) -> pd.DataFrame | None:
    """A results table (see `result_tables`) or None if absent or stale."""
    path = result_tables(results).get(name)
    if path is None and name == "contigs":
        folder = Path(results) / "contigs"
        if folder.is_dir() and any(folder.rglob("*.parquet")):
            path = folder
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
    contigs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per sample plus a `cohort` row; counts of records and distinct sequences.

    `input_records`, `ok_records`, `confident_records` and `skipped_<reason>` count
    records; the other columns count distinct sequences (the cohort row does not
    double count a sequence that several samples share). `flagged` (distinct
    structures with a non-empty `flags` list) appears when `structures` has `flags`;
    `contigs`, `contigs_<status>` and `genes_called` when `contigs` is given.
    """
    folded = set(structures["seq_hash"]) if structures is not None else set()
    embedded = set(embeddings["seq_hash"]) if embeddings is not None else set()
    confident: set[str] = set()
    if structures is not None and len(structures):
        mask = (structures["mean_plddt"] > min_plddt) & (structures["ptm"] > min_ptm)
        confident = set(structures.loc[mask, "seq_hash"])
    flagged: set[str] | None = None
    if structures is not None and "flags" in structures.columns:
        has_flags = structures["flags"].map(lambda f: f is not None and len(f) > 0)
        flagged = set(structures.loc[has_flags.astype(bool), "seq_hash"])
    reasons = sorted(r for r in proteins["status"].dropna().unique() if r != OK)
    contig_statuses = sorted(contigs["status"].dropna().unique()) if contigs is not None else []

    def row(group: pd.DataFrame) -> dict:
        ok = set(group.loc[group["seq_hash"].notna(), "seq_hash"])
        counts = {
            "input_records": len(group),
            "ok_records": int((group["status"] == OK).sum()),
            "distinct_sequences": len(ok),
            "embedded": len(ok & embedded),
            "folded": len(ok & folded),
            "high_confidence": len(ok & confident),
            "confident_records": int(group["seq_hash"].isin(confident).sum()),
        }
        if flagged is not None:
            counts["flagged"] = len(ok & flagged)
        for reason in reasons:
            counts[f"skipped_{reason}"] = int((group["status"] == reason).sum())
        return counts

    def contig_row(group: pd.DataFrame | None) -> dict:
        group = group if group is not None else contigs.iloc[0:0]
        counts = {"contigs": len(group),
                  "genes_called": int(pd.to_numeric(group["genes"]).fillna(0).sum())}
        for status in contig_statuses:
            counts[f"contigs_{status}"] = int((group["status"] == status).sum())
        return counts

    by_contig_sample = dict(tuple(contigs.groupby("sample", sort=True))) \
        if contigs is not None else {}
    rows = {}
    for name, group in proteins.groupby("sample", sort=True):
        rows[name] = row(group)
        if contigs is not None:
            rows[name].update(contig_row(by_contig_sample.get(name)))
    rows[COHORT] = row(proteins)
    if contigs is not None:
        rows[COHORT].update(contig_row(contigs))
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
    """Write `counts.tsv` and the plots (`PLOTS`) into `output_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proteins = read_result(results, "proteins", ["sample", "seq_hash", "status", "length"])
    if proteins is None:
        raise FileNotFoundError(f"no proteins table under {results}")
    structures = read_result(results, "structures",
                             ["seq_hash", "length", "mean_plddt", "ptm", "flags"])
    embeddings = read_result(results, "embeddings", ["seq_hash", *LM_SCORES])
    contigs = read_result(results, "contigs", ["sample", "contig", "genes", "status"])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}

    counts = cohort_counts(proteins, structures, embeddings, min_plddt=min_plddt, min_ptm=min_ptm,
                           contigs=contigs)
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
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.6 * proteins["sample"].nunique()), 4))
    per_sample = counts[counts["sample"] != COHORT]
    if have:
        ax.bar(per_sample["sample"], per_sample["confident_records"], color="tab:green")
        ax.set_xticks(range(len(per_sample)), list(per_sample["sample"]), rotation=30,
                      ha="right")
        ax.set_ylabel("records")
        ax.set_title(f"confident hits per sample (mean pLDDT > {min_plddt:g}, "
                     f"pTM > {min_ptm:g})")
    else:
        empty(ax)
    save(fig, "hits_per_sample.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    points = embedding_map(results, proteins) if embeddings is not None else None
    if points is not None and len(points[0]):
        coords, samples, explained = points
        names = sorted(set(samples))
        cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
        for i, name in enumerate(names):
            mask = np.asarray(samples) == name
            ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.6,
                       color=cmap(i % cmap.N), label=name)
        if len(names) <= 20:
            ax.legend(markerscale=2, fontsize=7, loc="best")
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% of variance)")
        ax.set_title("embeddings, PCA (one point per sample and sequence)")
    else:
        ax.text(0.5, 0.5, "no embeddings (embedding off or fewer than 2)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    save(fig, "embedding_pca.png")

    present = [c for c in LM_SCORES if embeddings is not None and c in embeddings.columns
               and embeddings[c].notna().any()]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(5 * max(1, len(present)), 4),
                             squeeze=False)
    for ax, column in zip(axes[0], present, strict=False):
        ax.hist(embeddings[column].dropna(), bins=40, color="tab:purple")
        ax.set_xlabel(column.replace("_", " "))
        ax.set_ylabel("distinct sequences")
    if not present:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no language-model scores (embed --lm-score none)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    save(fig, "lm_scores.png")
    return paths


def embedding_map(
    results: str | os.PathLike,
    proteins: pd.DataFrame,
    *,
    max_points: int = PCA_MAX_POINTS,
    seed: int = 0,
) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """PCA of the embeddings: ([n, 2] coordinates, sample of each point, explained variance
    ratio of PC1 and PC2), one point per (sample, distinct sequence) pair, uniformly
    subsampled to `max_points` sequences; None when fewer than two embeddings."""
    path = result_tables(results).get("embeddings")
    if path is None:
        return None
    dataset = ds.dataset(path, format="parquet")
    total = dataset.count_rows()
    keep = 1.0 if total <= max_points else max_points / total
    rng = np.random.default_rng(seed)
    hashes, blocks = [], []
    for batch in dataset.to_batches(columns=["seq_hash", "embedding"]):
        valid = batch.column(1).is_valid().to_numpy(zero_copy_only=False)
        chosen = valid & (rng.random(batch.num_rows) < keep)
        if not chosen.any():
            continue
        picked = batch.filter(chosen)
        dim = picked.schema.field("embedding").type.list_size
        flat = picked.column(1).flatten().to_numpy(zero_copy_only=False)
        blocks.append(np.asarray(flat, dtype=np.float64).reshape(-1, dim))
        hashes += picked.column(0).to_pylist()
    if len(hashes) < 2:
        return None
    matrix = np.concatenate(blocks)
    matrix -= matrix.mean(axis=0)
    _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    coords = matrix @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    variance = singular ** 2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    explained = np.pad(explained, (0, 2 - len(explained)))
    pairs = proteins[["sample", "seq_hash"]].dropna().drop_duplicates()
    position = {h: i for i, h in enumerate(hashes)}
    pairs = pairs[pairs["seq_hash"].isin(position)]
    rows = pairs["seq_hash"].map(position).to_numpy()
    return coords[rows], pairs["sample"].tolist(), explained
