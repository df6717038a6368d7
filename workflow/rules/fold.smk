# ESMFold structures of one shard on one GPU. A retry after a failure (e.g. out
# of memory) halves the token budget of a batch.

if CONFIG["fold"]:

    rule fold:
        input:
            shard="work/plan/fold/shards/{shard}.parquet",
            model=model_input("fold"),
        output:
            f"{cache_dir('fold')}/{{shard}}.parquet",
        params:
            model=model_arg("fold"),
            options=optional_args(
                "fold", ["dtype", "device", "max_length", "num_recycles", "chunk_size"]
            ),
        threads: CONFIG["fold"]["threads"]
        resources:
            gpu=1,
            # Not a scheduling resource: the per-batch token budget, which only
            # resources may derive from the attempt number.
            max_tokens=token_budget("fold"),
        log:
            "logs/fold/{shard}.log",
        benchmark:
            "logs/benchmarks/fold/{shard}.tsv"
        run:
            shell(
                "esmpipe fold {params.model} --input {input.shard} --output {output}"
                " --max-tokens {resources.max_tokens} {params.options} > {log} 2>&1"
            )
