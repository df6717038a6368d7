# The cohort's result tables: results/embeddings and results/structures from the
# stage caches (earlier runs' parts and this run's), results/proteins with one row
# per input record.


rule gather_stage:
    input:
        plan=lambda wildcards: f"work/plan/{STAGE_OF[wildcards.table]}",
        parts=lambda wildcards: new_shards(STAGE_OF[wildcards.table])(wildcards),
    output:
        table=directory("results/{table}"),
        status="work/status/{table}.parquet",
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        "logs/gather/{table}.log",
    benchmark:
        "logs/benchmarks/gather/{table}.tsv"
    run:
        shell(
            "esmpipe gather --table {wildcards.table} --plan {input.plan}"
            " --output {output.table} --status-output {output.status} > {log} 2>&1"
        )


rule gather_proteins:
    input:
        ingest=expand("work/ingest/{sample}.parquet", sample=sorted(SAMPLES)),
        status=[f"work/status/{RESULT_TABLE[stage]}.parquet" for stage in ENABLED],
    output:
        directory("results/proteins"),
    params:
        status=" ".join(
            f"--status {stage}=work/status/{RESULT_TABLE[stage]}.parquet" for stage in ENABLED
        ),
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        "logs/gather/proteins.log",
    benchmark:
        "logs/benchmarks/gather/proteins.tsv"
    run:
        shell(
            "esmpipe gather --table proteins --ingest {input.ingest} {params.status}"
            " --output {output} > {log} 2>&1"
        )
