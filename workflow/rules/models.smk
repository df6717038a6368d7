# Random-weight checkpoints for the offline demo and tests: `model: {preset: NAME}`.


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
    run:
        shell("esmpipe init-model --preset {wildcards.preset} --output {output} > {log} 2>&1")
