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


# The cohort's ingest tables, one path a line: `--ingest-list` of the plan and the
# gather, so that no command line grows with the cohort. Written in Python (a shell
# command holding every path would itself pass the kernel's argument limit).
rule ingest_list:
    input:
        ingest_files(),
    output:
        "work/ingest/list.txt",
    log:
        "logs/ingest/list.log",
    run:
        Path(output[0]).write_text("".join(f"{path}\n" for path in input))
