# The cohort's result tables: results/embeddings and results/structures from the
# stage caches (earlier runs' parts and this run's), results/proteins with one row
# per input record, results/contigs with one row per input contig.
#
# When a shard still fails after its retries, these rules cannot run; with
# `partial: true` the end of the run gathers what did finish instead (see the
# Snakefile's `onerror` and esmpipe/pipeline/summary.py).


rule gather_stage:
    input:
        plan=lambda wildcards: f"work/plan/{STAGE_OF[wildcards.table]}",
        parts=lambda wildcards: new_shards(STAGE_OF[wildcards.table])(wildcards),
    output:
        table=directory("results/{table}"),
        status="work/status/{table}.parquet",
    log:
        "logs/gather/{table}.log",
    benchmark:
        "logs/benchmarks/gather/{table}.tsv"
    conda:
        ESMPIPE_ENV
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "esmpipe gather --table {wildcards.table} --plan {input.plan}"
        " --output {output.table} --status-output {output.status} --reuse-dir work/gathered/{wildcards.table} > {log} 2>&1"


rule gather_proteins:
    input:
        ingest=ingest_files(),
        ingest_list=INGEST_LIST,
        status=[f"work/status/{RESULT_TABLE[stage]}.parquet" for stage in ENABLED],
    output:
        directory("results/proteins"),
    log:
        "logs/gather/proteins.log",
    benchmark:
        "logs/benchmarks/gather/proteins.tsv"
    conda:
        ESMPIPE_ENV
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        ingest=lambda wildcards, input: ingest_arg(input.ingest_list),
        status=" ".join(
            f"--status {stage}=work/status/{RESULT_TABLE[stage]}.parquet"
            for stage in ENABLED
        ),
    shell:
        "esmpipe gather --table proteins {params.ingest} {params.status}"
        " --output {output} --reuse-dir work/gathered/proteins > {log} 2>&1"


if CONTIG_SAMPLES and CONTIGS_TABLE:

    rule gather_contigs:
        input:
            ingest=ingest_files(),
            ingest_list=INGEST_LIST,
        output:
            directory("results/contigs"),
        log:
            "logs/gather/contigs.log",
        benchmark:
            "logs/benchmarks/gather/contigs.tsv"
        conda:
            ESMPIPE_ENV
        resources:
            mem_mb=4000,
            runtime=60,
        shell:
            "esmpipe gather --table contigs --ingest-list {input.ingest_list}"
            " --output {output} > {log} 2>&1"
