# De-duplicate the cohort and cut the sequences no earlier run computed (under
# the same settings) into cost-balanced shards. A checkpoint: the shards it
# writes decide the embed/fold jobs.


checkpoint plan:
    input:
        expand("work/ingest/{sample}.parquet", sample=sorted(SAMPLES)),
    output:
        plan=directory("work/plan/{stage}"),
    params:
        settings=lambda wildcards: json.dumps(stage_settings(wildcards.stage), sort_keys=True),
        cache=lambda wildcards: cache_dir(wildcards.stage),
        shard_size=lambda wildcards: CONFIG[wildcards.stage]["shard_size"],
        cost_exponent=lambda wildcards: CONFIG[wildcards.stage]["cost_exponent"],
        max_length=lambda wildcards: optional_args(wildcards.stage, ["max_length"]),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/plan/{stage}.log",
    benchmark:
        "logs/benchmarks/plan/{stage}.tsv"
    run:
        shell(
            "esmpipe shard --stage {wildcards.stage} --ingest {input} --cache-dir {params.cache}"
            " --output-dir {output.plan} --settings {params.settings:q}"
            " --shard-size {params.shard_size} --cost-exponent {params.cost_exponent}"
            " {params.max_length} > {log} 2>&1"
        )
