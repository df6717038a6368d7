# De-duplicate the cohort and cut the sequences no earlier run computed (under
# the same cache key) into cost-balanced shards. A checkpoint: the shards it
# writes decide the embed/fold jobs. The key record goes in as the settings: its
# `expect` makes the planner reuse only parts whose metadata match it.


checkpoint plan:
    input:
        ingest=ingest_files(),
        ingest_list=INGEST_LIST,
        key="work/keys/{stage}.json",
        cache_dir="work/keys/{stage}.cache_dir",
    output:
        plan=directory("work/plan/{stage}"),
    params:
        ingest=lambda wildcards, input: ingest_arg(input.ingest_list),
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
    conda:
        ESMPIPE_ENV
    shell:
        "esmpipe shard --stage {wildcards.stage} {params.ingest}"
        ' --cache-dir "$(cat {input.cache_dir})" --output-dir {output.plan}'
        ' --settings "$(cat {input.key})"'
        " --shard-size {params.shard_size} --cost-exponent {params.cost_exponent}"
        " {params.max_length} > {log} 2>&1"
