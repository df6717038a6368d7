# One sample's FASTA to a table of records: normalised sequence, status, seq_hash;
# for contigs, genes called by Prodigal (meta mode) with their coordinates.


rule ingest:
    input:
        lambda wildcards: SAMPLES[wildcards.sample].path,
    output:
        "work/ingest/{sample}.parquet",
    params:
        type=lambda wildcards: SAMPLES[wildcards.sample].type,
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        "logs/ingest/{sample}.log",
    benchmark:
        "logs/benchmarks/ingest/{sample}.tsv"
    run:
        shell(
            "esmpipe ingest --sample {wildcards.sample} --type {params.type}"
            " --input {input} --output {output} > {log} 2>&1"
        )
