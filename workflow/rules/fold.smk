# ESMFold structures of one shard on one GPU, offline (the model was fetched by
# `fetch_model`). A retry after a failure halves the token budget of a batch (out
# of memory) and asks for more runtime (a timeout); it resumes from the shard's
# last finished batch.

if CONFIG["fold"]:

    rule fold:
        input:
            shard="work/plan/fold/shards/{shard}.parquet",
            model="work/models/fold.json",
        output:
            "results/cache/fold/{key}/{shard}.parquet",
        params:
            model=model_arg("fold"),
            options=optional_args(
                "fold", ["dtype", "device", "max_length", "chunk_size"]
            ),
            values=value_args("fold"),
        threads: CONFIG["fold"]["threads"]
        resources:
            gpu=1,
            runtime=runtime(480),
            # Not a scheduling resource: the per-batch token budget, which only
            # resources may derive from the attempt number.
            max_tokens=token_budget("fold"),
        log:
            "logs/fold/{key}/{shard}.log",
        benchmark:
            "logs/benchmarks/fold/{key}/{shard}.tsv"
        conda:
            ESMPIPE_ENV
        shell:
            "HF_HUB_OFFLINE=1 esmpipe fold {params.model} --input {input.shard}"
            " --output {output} --max-tokens {resources.max_tokens} {params.options}"
            " {params.values} > {log} 2>&1"
