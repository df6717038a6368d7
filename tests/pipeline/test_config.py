from pathlib import Path

import pytest
import yaml

from esmpipe.pipeline.config import ConfigError, read_sample_sheet, validate_config

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "workflow" / "schemas"


@pytest.fixture(scope="module")
def config_schema() -> dict:
    return yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())


@pytest.fixture(scope="module")
def sheet_schema() -> dict:
    return yaml.safe_load((SCHEMAS / "samples.schema.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_bundled_configs_are_valid(config_schema, name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validated = validate_config(config, config_schema)
    assert validated["fold"]["max_length"] <= 1280


def test_minimal_config_gets_defaults(config_schema):
    config = validate_config(
        {"samples": "s.tsv", "embed": {"model": "facebook/esm2_t6_8M_UR50D"},
         "fold": {"model": "facebook/esmfold_v1"}},
        config_schema,
    )
    assert config["fold"]["max_length"] == 1280
    assert config["fold"]["cost_exponent"] == 3
    assert config["embed"]["cost_exponent"] == 1
    assert config["embed"]["layers"] == [-1] and config["embed"]["include"] == ["mean"]
    assert config["embed"]["lm_score"] == "none" and config["partial"] is False
    assert config["fold"]["dtype"] == "auto"
    assert config["high_confidence"] == {"mean_plddt": 70, "ptm": 0.7}


def test_stage_switched_off(config_schema):
    config = validate_config({"samples": "s.tsv", "embed": False,
                              "fold": {"model": {"preset": "tiny-esmfold"}}}, config_schema)
    assert config["embed"] is False
    with pytest.raises(ConfigError, match="both `embed` and `fold` are switched off"):
        validate_config({"samples": "s.tsv", "embed": False, "fold": False}, config_schema)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"embed": False, "fold": {"model": "m"}}, "'samples' is a required property"),
        ({"samples": "s", "embed": {"model": "m", "max_tokens": 0}, "fold": False},
         "embed.max_tokens: 0 is less than the minimum of 1"),
        ({"samples": "s", "embed": False, "fold": {"model": "m", "max_lenght": 5}},
         "fold: Additional properties are not allowed ('max_lenght' was unexpected)"),
        ({"samples": "s", "embed": False, "fold": {"model": "m", "dtype": "fp8"}},
         "fold.dtype: 'fp8' is not one of"),
        ({"samples": "s", "embed": {"model": {"name": "x"}}, "fold": False},
         "embed.model: 'preset' is a required property"),
        ({"samples": "s", "embed": False, "fold": {"model": "m", "device": "gpu"}},
         "fold.device: 'gpu' does not match"),
    ],
)
def test_errors_name_the_field(config_schema, config, message):
    with pytest.raises(ConfigError) as err:
        validate_config(config, config_schema)
    assert message in str(err.value)


def write_sheet(folder: Path, rows: list[str]) -> Path:
    (folder / "a.faa").write_text(">x\nMKV\n")
    sheet = folder / "samples.tsv"
    sheet.write_text("\n".join(["sample\tpath\ttype", *rows]) + "\n")
    return sheet


def test_sample_sheet_paths_relative_to_sheet(tmp_path, sheet_schema):
    sheet = write_sheet(tmp_path, ["# a comment", "s1\ta.faa\tprotein",
                                   f"s2\t{tmp_path / 'a.faa'}\tcontigs"])
    samples = read_sample_sheet(sheet, sheet_schema)
    assert [(s.sample, s.type) for s in samples] == [("s1", "protein"), ("s2", "contigs")]
    assert samples[0].path == str(tmp_path / "a.faa")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["s1\ta.faa\tdna"],
         "line 2 (sample 's1'): type: 'dna' is not one of ['protein', 'contigs']"),
        (["s1\ta.faa\tprotein", "s1\ta.faa\tprotein"],
         "line 3 (sample 's1'): sample name already used on line 2"),
        (["s1\tmissing.faa\tprotein"], "line 2 (sample 's1'): path: "),
        (["bad/name\ta.faa\tprotein"],
         "line 2 (sample 'bad/name'): sample: 'bad/name' does not match"),
        (["s1\ta.faa"], "line 2: 2 tab-separated fields, the header has 3"),
        ([], "lists no samples"),
    ],
)
def test_sample_sheet_errors_name_the_row(tmp_path, sheet_schema, rows, message):
    with pytest.raises(ConfigError) as err:
        read_sample_sheet(write_sheet(tmp_path, rows), sheet_schema)
    assert message in str(err.value)
    assert "samples.tsv" in str(err.value)


def test_sample_sheet_missing_column(tmp_path, sheet_schema):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tfile\ttype\ns1\ta.faa\tprotein\n")
    with pytest.raises(ConfigError, match=r"line 1: missing column\(s\) path"):
        read_sample_sheet(sheet, sheet_schema)
    with pytest.raises(ConfigError, match="does not exist"):
        read_sample_sheet(tmp_path / "nope.tsv", sheet_schema)
