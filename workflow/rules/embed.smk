# ESM-2 embeddings of one shard on one GPU. A retry after a failure (e.g. out of
# memory) halves the token budget of a batch.

if CONFIG["embed"]:

    rule embed:
        input:
            shard="work/plan/embed/shards/{shard}.parquet",
            model=model_input("embed"),
        output:
            f"{cache_dir('embed')}/{{shard}}.parquet",
        params:
            model=model_arg("embed"),
            options=optional_args("embed", ["dtype", "device", "max_length", "layer", "pooling"]),
        threads: CONFIG["embed"]["threads"]
        resources:
            gpu=1,
            # Not a scheduling resource: the per-batch token budget, which only
            # resources may derive from the attempt number.
            max_tokens=token_budget("embed"),
        log:
            "logs/embed/{shard}.log",
        benchmark:
            "logs/benchmarks/embed/{shard}.tsv"
        run:
            shell(
                "esmpipe embed {params.model} --input {input.shard} --output {output}"
                " --max-tokens {resources.max_tokens} {params.options} > {log} 2>&1"
            )
