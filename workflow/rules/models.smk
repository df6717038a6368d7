# Models: random-weight checkpoints for the offline demo and tests (`model: {preset:
# NAME}`), and the identity of each stage's model. GPU nodes are often offline:
# `fetch_model` runs where Snakemake runs, before any GPU job, and downloads a hub
# model into the Hugging Face cache (which GPU jobs read with HF_HUB_OFFLINE=1);
# its record names what the weights are (the hub commit, or a digest of a folder).


rule init_model:
    output:
        directory("resources/models/{preset}"),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        "logs/init_model/{preset}.log",
    benchmark:
        "logs/benchmarks/init_model/{preset}.tsv"
    conda:
        ESMPIPE_ENV
    shell:
        "esmpipe init-model --preset {wildcards.preset} --output {output} > {log} 2>&1"


rule fetch_model:
    input:
        lambda wildcards: model_input(wildcards.stage),
    output:
        "work/models/{stage}.json",
    params:
        model=lambda wildcards: model_arg(wildcards.stage),
    resources:
        mem_mb=2000,
        runtime=120,
    log:
        "logs/fetch_model/{stage}.log",
    conda:
        ESMPIPE_ENV
    shell:
        "esmpipe fetch-model {params.model} --output {output} > {log} 2>&1"


# What determines the stage's values (model identity, the precision the jobs run
# in, value-changing settings, the engine's output version) and the cache folder
# their digest names.
rule cache_key:
    input:
        model="work/models/{stage}.json",
    output:
        key="work/keys/{stage}.json",
        cache_dir="work/keys/{stage}.cache_dir",
    params:
        options=lambda wildcards: cache_key_args(wildcards.stage),
    log:
        "logs/cache_key/{stage}.log",
    conda:
        ESMPIPE_ENV
    shell:
        "esmpipe cache-key --stage {wildcards.stage} --identity {input.model}"
        " {params.options} --output {output.key} --cache-dir-output {output.cache_dir}"
        " > {log} 2>&1"
