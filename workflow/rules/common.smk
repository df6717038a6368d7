# Config and sample sheet validation, stage settings and helpers for the rules.
#
# NOTE: the rules call `shell()` from short `run` blocks rather than using `shell`
# directives. esmpipe is installed into the environment Snakemake itself runs in
# (no conda, no container, by design), which is what a `run` block declares; for
# `shell` directives the linter asks for a conda environment or container each.

import json
import re
import shlex

import yaml
from snakemake.exceptions import WorkflowError

from esmpipe.pipeline.config import STAGES, ConfigError, read_sample_sheet, validate_config
from esmpipe.pipeline.plan import read_manifest
from esmpipe.pipeline.sharding import retry_token_budget, settings_key
from esmpipe.io.tables import STAGE_TABLES as RESULT_TABLE

STAGE_OF = {table: stage for stage, table in RESULT_TABLE.items()}


def _load_schema(name):
    with open(workflow.source_path(f"../schemas/{name}")) as handle:
        return yaml.safe_load(handle)


try:
    CONFIG = validate_config(config, _load_schema("config.schema.yaml"))
    SAMPLES = {
        s.sample: s
        for s in read_sample_sheet(CONFIG["samples"], _load_schema("samples.schema.yaml"))
    }
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.update(CONFIG)

ENABLED = [stage for stage in STAGES if CONFIG[stage]]


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES)),
    stage="|".join(ENABLED),
    shard="[0-9a-f]{20}",
    table="|".join(RESULT_TABLE[stage] for stage in ENABLED),
    preset="[A-Za-z0-9][A-Za-z0-9._-]*",


def stage_settings(stage):
    """Settings that determine a stage's results; their digest names the cache folder.

    Batching and memory knobs (max_tokens, chunk_size, device, threads) change
    results at most by floating-point rounding, and the length limit is applied by
    the planner; they are left out, so changing them reuses the cache. The model
    is identified by its name, not its weights.
    """
    c = CONFIG[stage]
    model = c["model"]
    preset = isinstance(model, dict)
    settings = {
        "stage": stage,
        "model": model,
        "revision": None if preset else c["revision"],
        "dtype": c["dtype"],
    }
    if stage == "embed":
        settings.update(layer=c["layer"], pooling=c["pooling"])
    else:
        settings.update(num_recycles=c["num_recycles"])
    return settings


def cache_dir(stage):
    return f"results/cache/{stage}/{settings_key(stage_settings(stage))}"


def model_input(stage):
    """The model folder the workflow makes for `{preset: NAME}`; nothing for hub ids."""
    model = CONFIG[stage]["model"]
    return f"resources/models/{model['preset']}" if isinstance(model, dict) else []


def model_arg(stage):
    """`--model` (and `--revision`) for a stage's command line."""

    def arg(wildcards, input):
        model = CONFIG[stage]["model"]
        if isinstance(model, dict):
            return f"--model {shlex.quote(input.model)}"
        revision = CONFIG[stage]["revision"]
        return f"--model {shlex.quote(model)}" + (
            f" --revision {shlex.quote(revision)}" if revision else ""
        )

    return arg


def token_budget(stage):
    """Token budget of a batch: the configured one, halved on each retry (out of memory)."""
    return lambda wildcards, attempt: retry_token_budget(CONFIG[stage]["max_tokens"], attempt)


def optional_args(stage, names):
    """`--name value` for each setting that is not null."""
    c = CONFIG[stage]
    return " ".join(
        f"--{name.replace('_', '-')} {c[name]}" for name in names if c.get(name) is not None
    )


def new_shards(stage):
    """Cache parts this run computes: the shards of the stage's plan (a checkpoint)."""

    def parts(wildcards):
        # The manifest, not a glob of shards/: it is the plan that gathering reads.
        manifest = read_manifest(checkpoints.plan.get(stage=stage).output.plan)
        shards = sorted(s["shard_id"] for s in manifest["shards"])
        return expand(f"{cache_dir(stage)}/{{shard}}.parquet", shard=shards)

    return parts


def final_outputs():
    outputs = ["results/proteins"]
    outputs += [f"results/{RESULT_TABLE[stage]}" for stage in ENABLED]
    outputs += [f"results/report/{name}" for name in REPORT_FILES]
    return outputs


REPORT_FILES = ("counts.tsv", "plddt_per_sample.png", "ptm_vs_plddt.png", "length_vs_plddt.png")
