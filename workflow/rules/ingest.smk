# One sample's FASTA to a table of records: normalised sequence, status, seq_hash;
# for contigs, genes called by Prodigal (meta mode) with their coordinates, and a
# table of the contigs themselves. On a cluster, ingest jobs are tiny: the profile
# groups them (`group-components`) so that one cluster job ingests many samples.


rule ingest:
    input:
        lambda wildcards: SAMPLES[wildcards.sample].path,
    output:
        "work/ingest/{sample}.parquet",
    params:
        type=lambda wildcards: SAMPLES[wildcards.sample].type,
    group:
        "ingest"
    resources:
        mem_mb=2000,
        runtime=runtime(60),
    log:
        "logs/ingest/{sample}.log",
    benchmark:
        "logs/benchmarks/ingest/{sample}.tsv"
    conda:
        ESMPIPE_ENV
    shell:
        "esmpipe ingest --sample {wildcards.sample} --type {params.type}"
        " --input {input:q} --output {output} > {log} 2>&1"
