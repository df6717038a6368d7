# Counts and pictures (pLDDT, hits, embedding map, LM scores) for `snakemake --report`.


rule report_stats:
    input:
        ["results/proteins"]
        + [f"results/{RESULT_TABLE[stage]}" for stage in ENABLED]
        # results/contigs when the workflow gathers one (common.smk)
        + (["results/contigs"] if CONTIG_SAMPLES and CONTIGS_TABLE else []),
    output:
        counts=report(
            "results/report/counts.tsv",
            caption="../report/counts.rst",
            category="Cohort",
            labels={"table": "counts per sample"},
        ),
        per_sample=report(
            "results/report/plddt_per_sample.png",
            caption="../report/plddt_per_sample.rst",
            category="Structures",
            labels={"figure": "pLDDT per sample"},
        ),
        ptm=report(
            "results/report/ptm_vs_plddt.png",
            caption="../report/ptm_vs_plddt.rst",
            category="Structures",
            labels={"figure": "pTM vs pLDDT"},
        ),
        length=report(
            "results/report/length_vs_plddt.png",
            caption="../report/length_vs_plddt.rst",
            category="Structures",
            labels={"figure": "length vs pLDDT"},
        ),
        hits=report(
            "results/report/hits_per_sample.png",
            caption="../report/hits_per_sample.rst",
            category="Structures",
            labels={"figure": "confident hits per sample"},
        ),
        pca=report(
            "results/report/embedding_pca.png",
            caption="../report/embedding_pca.rst",
            category="Embeddings",
            labels={"figure": "embedding map (PCA)"},
        ),
        lm=report(
            "results/report/lm_scores.png",
            caption="../report/lm_scores.rst",
            category="Embeddings",
            labels={"figure": "language-model scores"},
        ),
    log:
        "logs/report_stats.log",
    benchmark:
        "logs/benchmarks/report_stats.tsv"
    conda:
        ESMPIPE_ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        min_plddt=CONFIG["high_confidence"]["mean_plddt"],
        min_ptm=CONFIG["high_confidence"]["ptm"],
    shell:
        "esmpipe report-stats --results results --output-dir results/report"
        " --min-plddt {params.min_plddt} --min-ptm {params.min_ptm} > {log} 2>&1"
