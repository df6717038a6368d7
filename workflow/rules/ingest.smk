# One sample's FASTA to a table of records: normalised sequence, status, seq_hash;
# for contigs, genes called by Prodigal (meta mode) with their coordinates, and a
# table of the contigs themselves. On a cluster, ingest jobs are tiny: group them
# (`--groups ingest=ingest --group-components ingest=50`) so that one cluster job
# ingests many samples.


rule ingest:
    input:
        lambda wildcards: SAMPLES[wildcards.sample].path,
    output:
        "work/ingest/{sample}.parquet",
    log:
        "logs/ingest/{sample}.log",
    benchmark:
        "logs/benchmarks/ingest/{sample}.tsv"
    conda:
        ESMPIPE_ENV
    resources:
        mem_mb=2000,
        runtime=runtime(60),
    params:
        type=lambda wildcards: SAMPLES[wildcards.sample].type,
    shell:
        "esmpipe ingest --sample {wildcards.sample} --type {params.type}"
        " --input {input:q} --output {output} > {log} 2>&1"
