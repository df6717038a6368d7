# ESM-2 embeddings of one shard on one GPU, offline (the model was fetched by
# `fetch_model`). A retry after a failure halves the token budget of a batch (out
# of memory) and asks for more runtime (a timeout); it resumes from the shard's
# last finished batch.

if CONFIG["embed"]:

    rule embed:
        input:
            shard="work/plan/embed/shards/{shard}.parquet",
            model="work/models/embed.json",
        output:
            "results/cache/embed/{key}/{shard}.parquet",
        params:
            model=model_arg("embed"),
            options=optional_args("embed", ["dtype", "device", "max_length"]),
            values=value_args("embed"),
        threads: CONFIG["embed"]["threads"]
        resources:
            gpu=1,
            runtime=runtime(240),
            # Not a scheduling resource: the per-batch token budget, which only
            # resources may derive from the attempt number.
            max_tokens=token_budget("embed"),
        log:
            "logs/embed/{key}/{shard}.log",
        benchmark:
            "logs/benchmarks/embed/{key}/{shard}.tsv"
        conda:
            ESMPIPE_ENV
        shell:
            "HF_HUB_OFFLINE=1 esmpipe embed {params.model} --input {input.shard}"
            " --output {output} --max-tokens {resources.max_tokens} {params.options}"
            " {params.values} > {log} 2>&1"
