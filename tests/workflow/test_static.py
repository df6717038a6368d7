"""The workflow lints clean and both profiles resolve a dry run (no cluster needed)."""

import pytest

from .runner import PROFILES, prepare_demo, snakemake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return prepare_demo(tmp_path_factory.mktemp("static"))


def test_lint(workdir, demo_env):
    result = snakemake(workdir, "--configfile", "config/demo.yaml", "--lint", env=demo_env)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_rules_are_snakefmt_formatted():
    """The Snakemake workflow catalog checks formatting; .ci/run checks the whole folder."""
    import subprocess
    import sys
    from pathlib import Path

    snakefmt = Path(sys.executable).with_name("snakefmt")
    if not snakefmt.exists():
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    repo = PROFILES.parent
    files = [str(p.relative_to(repo)) for p in [repo / "workflow" / "Snakefile",
             *sorted((repo / "workflow" / "rules").glob("*.smk"))]]  # fmt: skip
    assert len(files) >= 9
    result = subprocess.run([str(snakefmt), "--check", *files], cwd=repo, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} file(s) would be left unchanged" in result.stderr


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run(workdir, demo_env, profile):
    result = snakemake(workdir, "--profile", str(PROFILES / profile),
                       "--configfile", "config/demo.yaml", "-n", env=demo_env)
    out = result.stdout + result.stderr
    assert "ingest" in out and "plan" in out
    assert not (workdir / "results").exists()


def test_published_models_config_resolves(workdir, demo_env):
    """config/config.yaml names the published models; only the sample sheet is the user's."""
    sheet = workdir / "config" / "my_samples.tsv"
    sheet.write_text("sample\tpath\ttype\ns1\tdemo/sample_a.faa\tprotein\n")
    result = snakemake(workdir, "--configfile", "config/config.yaml",
                       "--config", f"samples={sheet}", "-n", env=demo_env)
    assert "plan" in result.stdout + result.stderr


def test_bad_sample_sheet_names_the_row(workdir, demo_env):
    sheet = workdir / "config" / "bad.tsv"
    sheet.write_text("sample\tpath\ttype\ns1\tdemo/sample_a.faa\tprotein\ns2\tdemo/x.faa\tdna\n")
    result = snakemake(workdir, "--configfile", "config/demo.yaml", "--config",
                       f"samples={sheet}", "-n", env=demo_env, check=False)
    assert result.returncode != 0
    assert "line 3 (sample 's2'): type: 'dna' is not one of" in result.stdout + result.stderr


def test_bad_config_names_the_field(workdir, demo_env):
    result = snakemake(workdir, "--configfile", "config/demo.yaml", "--config",
                       "fold={'model': 'x', 'dtype': 'fp8'}", "-n", env=demo_env, check=False)
    assert result.returncode != 0
    assert "fold.dtype: 'fp8' is not one of" in result.stdout + result.stderr


@pytest.mark.parametrize(("off", "on"), [("embed", "fold"), ("fold", "embed")])
def test_a_stage_switched_off(workdir, demo_env, off, on):
    result = snakemake(workdir, "--configfile", "config/demo.yaml", "--config", f"{off}=false",
                       "-n", "--forceall", env=demo_env)
    out = result.stdout + result.stderr
    table = {"embed": "results/embeddings", "fold": "results/structures"}
    assert f"output: work/plan/{on}" in out and f"output: work/plan/{off}" not in out
    assert table[on] in out and table[off] not in out


def test_no_rule_runs_python_in_a_job():
    """A `run:` block makes the local executor start a whole Snakemake per job (which
    parses the workflow and reads the sample sheet again): rules use `shell:`."""
    import re

    rules = [PROFILES.parent / "workflow" / "Snakefile",
             *(PROFILES.parent / "workflow" / "rules").glob("*.smk")]  # fmt: skip
    offenders = [f"{path.name}:{n}" for path in rules
                 for n, line in enumerate(path.read_text().splitlines(), start=1)
                 if re.fullmatch(r"\s+run:\s*", line)]  # fmt: skip
    assert not offenders
