# Config and sample sheet validation, stage settings and helpers for the rules.
#
# Every command runs from a `shell` directive. The local executor runs
# those in a thread of the one Snakemake process, where a `run` block would start a
# whole new Snakemake process per job (which parses the workflow and reads the
# sample sheet again, so a job's overhead would grow with the cohort). The `conda`
# environment of the rules documents the software; esmpipe is normally installed
# into the environment Snakemake itself runs in, and `--sdm conda` is optional.

import json
import re
import shlex
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from esmpipe.io.tables import STAGE_TABLES as RESULT_TABLE
from esmpipe.pipeline import identity
from esmpipe.pipeline.config import (
    STAGES,
    ConfigError,
    cli_supports,
    read_sample_sheet,
    validate_config,
)
from esmpipe.pipeline.plan import read_manifest
from esmpipe.pipeline.sharding import retry_token_budget

STAGE_OF = {table: stage for stage, table in RESULT_TABLE.items()}
ESMPIPE_ENV = "../envs/esmpipe.yaml"


def _load_schema(name):
    with open(workflow.source_path(f"../schemas/{name}")) as handle:
        return yaml.safe_load(handle)


try:
    CONFIG = validate_config(config, _load_schema("config.schema.yaml"))
    SAMPLES = {
        s.sample: s
        for s in read_sample_sheet(
            CONFIG["samples"], _load_schema("samples.schema.yaml")
        )
    }
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.update(CONFIG)

ENABLED = [stage for stage in STAGES if CONFIG[stage]]
CONTIG_SAMPLES = sorted(s for s, v in SAMPLES.items() if v.type == "contigs")

# Options of the esmpipe command line that other parts of the project add; the
# rules use them once the installed esmpipe has them.
LIST_INPUTS = cli_supports("shard", "--ingest-list") and cli_supports(
    "gather", "--ingest-list"
)
ALLOW_MISSING = cli_supports("gather", "--allow-missing")
CONTIGS_TABLE = cli_supports("gather", "--table", "contigs")


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES)),
    stage="|".join(ENABLED),
    shard="[0-9a-f]{20}",
    key="[0-9a-f]{16}",
    table="|".join(RESULT_TABLE[stage] for stage in ENABLED),
    preset="[A-Za-z0-9][A-Za-z0-9._-]*",


def is_preset(stage):
    return isinstance(CONFIG[stage]["model"], dict)


def value_settings(stage):
    """The stage's settings that change values (part of the cache key)."""
    c = CONFIG[stage]
    if stage == "embed":
        names = ("layers", "include", "lm_score")
    else:
        names = ("num_recycles", "early_stop_tolerance")
    return {name: c[name] for name in names}


def jobs_see_gpu(stage):
    """`--gpu` of `esmpipe cache-key`: whether the stage's jobs run on a GPU.

    Locally the jobs see this machine's devices (`auto`: look here); under a
    cluster executor they are GPU jobs (each requests gpu=1) on other nodes.
    """
    device = CONFIG[stage]["device"]
    if device == "cpu":
        return "no"
    if device.startswith("cuda") or not workflow.local_exec:
        return "yes"
    return "auto"


def model_path(stage):
    """What `--model` names: the preset's folder, or the configured hub id / folder."""
    model = CONFIG[stage]["model"]
    return f"resources/models/{model['preset']}" if is_preset(stage) else model


def model_input(stage):
    """Files whose change must refresh the model's identity record.

    The preset folder the workflow makes; a local folder's weight files; for a
    hub id, the local Hugging Face cache's pointer of the revision (rewritten
    when `esmpipe fetch-model` finds that the revision moved).
    """
    model = CONFIG[stage]["model"]
    if is_preset(stage):
        return [model_path(stage)]
    if identity.is_folder(model):
        return [str(p) for p in identity.weight_files(model)]
    ref = identity.hub_ref_file(model, CONFIG[stage]["revision"])
    return [str(ref)] if ref is not None else []


def model_arg(stage):
    """`--model` (and `--revision`) for a stage's command line."""
    arg = f"--model {shlex.quote(model_path(stage))}"
    revision = CONFIG[stage]["revision"]
    if revision and not is_preset(stage):
        arg += f" --revision {shlex.quote(revision)}"
    return arg


def token_budget(stage):
    """Token budget of a batch: the configured one, halved on each retry (out of memory)."""
    return lambda wildcards, attempt: retry_token_budget(
        CONFIG[stage]["max_tokens"], attempt
    )


def runtime(minutes):
    """Runtime (minutes) that grows with the attempt: a retry after a timeout asks for
    more. A profile's `set-resources` may replace it; keep `* attempt` there too."""
    return lambda wildcards, attempt: minutes * attempt


def optional_args(stage, names):
    """`--name value` for each setting that is not null."""
    c = CONFIG[stage]
    return " ".join(
        f"--{name.replace('_', '-')} {shlex.quote(str(c[name]))}"
        for name in names
        if c.get(name) is not None
    )


def value_args(stage):
    """The value-changing options of `esmpipe embed` / `esmpipe fold`, passed only when
    they differ from the command's defaults."""
    c = CONFIG[stage]
    args = []
    if stage == "embed":
        if c["layers"] != [-1]:
            args.append("--layers " + ",".join(map(str, c["layers"])))
        if sorted(c["include"]) != ["mean"]:
            args.append("--include " + ",".join(c["include"]))
        if c["lm_score"] != "none":
            args.append(f"--lm-score {c['lm_score']}")
    else:
        args.append(optional_args(stage, ["num_recycles", "early_stop_tolerance"]))
    return " ".join(a for a in args if a)


def cache_key_args(stage):
    c = CONFIG[stage]
    settings = json.dumps(value_settings(stage), sort_keys=True)
    return (
        f"--dtype {c['dtype']} --device {c['device']} --gpu {jobs_see_gpu(stage)}"
        f" --settings {shlex.quote(settings)}"
    )


def new_shards(stage):
    """Cache parts this run computes: the shards of the stage's plan (a checkpoint)."""

    def parts(wildcards):
        # The manifest, not a glob of shards/: it is the plan that gathering reads.
        manifest = read_manifest(checkpoints.plan.get(stage=stage).output.plan)
        cache = manifest["cache_dir"]
        return [f"{cache}/{s['shard_id']}.parquet" for s in manifest["shards"]]

    return parts


def ingest_files():
    return [f"work/ingest/{sample}.parquet" for sample in sorted(SAMPLES)]


def write_if_changed(path, text):
    """Write `text` to `path` unless it holds it already (so its mtime marks changes only)."""
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


# The cohort's ingest tables, one path a line: `--ingest-list` of the plan and the
# gathers, so that no command line grows with the cohort. Written here, where the
# sheet is read, and rewritten only when the cohort changes: a new sample then
# makes the plan run again, as its new ingest table would.
INGEST_LIST = "work/ingest/list.txt"
if workflow.is_main_process:
    write_if_changed(INGEST_LIST, "".join(f"{path}\n" for path in ingest_files()))


def ingest_arg(list_file):
    """The ingest tables for a command line: a list file, or (older esmpipe) every path."""
    if LIST_INPUTS:
        return f"--ingest-list {list_file}"
    return "--ingest " + " ".join(ingest_files())


def final_outputs():
    outputs = ["results/proteins"]
    outputs += [f"results/{RESULT_TABLE[stage]}" for stage in ENABLED]
    if CONTIG_SAMPLES and CONTIGS_TABLE:
        outputs.append("results/contigs")
    outputs += [f"results/report/{name}" for name in REPORT_FILES]
    return outputs


REPORT_FILES = (
    "counts.tsv",
    "plddt_per_sample.png",
    "ptm_vs_plddt.png",
    "length_vs_plddt.png",
)
