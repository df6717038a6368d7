"""Record ids come from users' FASTA files: none of them may become a path."""

from __future__ import annotations

import csv
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from esmpipe.results import Results
from esmpipe.results.export import export_structures, read_ids

from .conftest import run_esmpipe

HOSTILE = ["../x", "../../etc/passwd", "/tmp/abs", "with space", 'q"uo\'te', "a\\b", ".",
           "..", "-rf"]


def hostile_results(demo_results, tmp_path):
    """A copy of the demo results whose ok records carry the hostile ids."""
    copy = tmp_path / "work" / "results"
    shutil.copytree(demo_results, copy, ignore=shutil.ignore_patterns(".index", "cache"))
    n = 0  # over all files: the proteins table has one file per sample
    for part in sorted((copy / "proteins").rglob("*.parquet")):
        table = pq.read_table(part)
        ids = table["protein_id"].to_pylist()
        folded = table["fold_status"].to_pylist() if "fold_status" in table.column_names \
            else table["status"].to_pylist()
        for i, status in enumerate(folded):
            if status == "ok" and n < len(HOSTILE):
                ids[i] = HOSTILE[n]
                n += 1
        index = table.schema.get_field_index("protein_id")
        table = table.set_column(index, table.schema.field(index), pa.array(ids, pa.string()))
        pq.write_table(table, part)
    assert n == len(HOSTILE)
    return copy


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_hostile_ids_never_become_paths(demo_results, results_env, tmp_path):
    results = hostile_results(demo_results, tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(HOSTILE) + "\n")
    assert [name for _, name in read_ids(ids)] == HOSTILE
    (tmp_path / "out").mkdir()
    before = files_under(tmp_path)
    out = tmp_path / "out" / "export"
    result = run_esmpipe(results_env, tmp_path / "out", "export", "--results", str(results),
                         "--ids", str(ids), "--format", "cif", "--output", str(out))
    assert result.returncode == 0, result.stderr
    # Only the export folder is new; inside it only hex names and the index.
    new = set(files_under(tmp_path)) - set(before)
    assert all(p.startswith("out") for p in new)
    names = [p.name for p in out.iterdir()]
    assert "index.tsv" in names
    for name in names:
        if name != "index.tsv":
            stem, ext = name.split(".")
            assert ext == "cif" and len(stem) == 64 and set(stem) <= set("0123456789abcdef")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "x").exists()
    with open(out / "index.tsv", newline="") as handle:
        index = list(csv.DictReader(handle, delimiter="\t"))
    # Every hostile id reads back intact from the index, each with a structure file.
    assert sorted(r["protein_id"] for r in index) == sorted(HOSTILE)
    assert all(r["status"] == "exported" and (out / r["file"]).is_file() for r in index)

    with Results(results, index_dir=tmp_path / "ix") as res:
        assert res.resolve("../x") == index[[r["query"] for r in index].index("../x")][
            "seq_hash"]
        assert res.structure('q"uo\'te').startswith("REMARK")
        assert res.similar("with space", k=2)["record"][0].endswith("/with space")
        where = export_structures(res, tmp_path / "where", fmt="pdb",
                                  where="protein_id LIKE '%..%' OR protein_id LIKE '%/%'")
        assert where.files == len({r["seq_hash"] for r in index
                                   if ".." in r["protein_id"] or "/" in r["protein_id"]})
    assert all(p.parent == tmp_path / "where" for p in (tmp_path / "where").iterdir())
