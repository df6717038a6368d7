"""The ingest tables' columns are built from buffers (no pandas import), and are the
arrays `pa.array` would have built: same values, nulls, types and Parquet bytes."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.commands.ingest import column_array
from esmpipe.io.tables import CONTIGS_SCHEMA, PROTEINS_SCHEMA

COLUMNS = {
    "strings": ["sample_a", "", "p1.dup2", "x" * 1000],
    "non-ascii": ["prot\u00e9ine", "\u03b1-helix", "plain", "\U0001f9ec"],
    "some nulls": ["MKV", None, "", None, "LLA"],
    "first null": [None, "ok"],
    "all nulls": [None, None, None],
    "many": [f"id{i}" if i % 7 else None for i in range(1000)],
    # Past the first pieces (ingest._PIECE_ROWS) before a character that is not a byte.
    "late non-ascii": [f"M{'K' * (i % 50)}" for i in range(700)] + ["\u00c5"] + ["LV"] * 99,
}
INTEGERS = {
    "ints": [1, 0, -1, 127, -128],
    "some nulls": [None, 5, None, -1],
    "all nulls": [None],
    "many": [i % 200 - 100 if i % 3 else None for i in range(1000)],
}
WIDE = {pa.int32(): [2**31 - 1, -(2**31)], pa.int64(): [2**40, -(2**63), None]}
TYPES = sorted({f.type for f in (*PROTEINS_SCHEMA, *CONTIGS_SCHEMA)}, key=str)


def parquet_bytes(array: pa.Array) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"c": array}), sink, compression="zstd")
    return sink.getvalue()


def cases():
    for arrow_type in TYPES:
        values = COLUMNS if pa.types.is_string(arrow_type) or \
            pa.types.is_large_string(arrow_type) else INTEGERS  # fmt: skip
        for name, column in values.items():
            yield pytest.param(column, arrow_type, id=f"{arrow_type}-{name}")
        if arrow_type in WIDE:
            yield pytest.param(WIDE[arrow_type], arrow_type, id=f"{arrow_type}-wide")


@pytest.mark.parametrize(("values", "arrow_type"), list(cases()))
def test_column_array_is_what_pa_array_builds(values, arrow_type):
    got = column_array(list(values), arrow_type)
    want = pa.array(values, type=arrow_type)
    got.validate(full=True)
    assert got.type == arrow_type and got.null_count == want.null_count
    assert got.equals(want) and got.to_pylist() == values
    assert parquet_bytes(got) == parquet_bytes(want)


def test_every_ingest_column_type_is_built_from_buffers():
    # Other types fall back to pa.array (right, but it imports pandas): add them here.
    assert {str(t) for t in TYPES} == {"int8", "int32", "int64", "large_string", "string"}
    assert column_array([1.5, None], pa.float32()).to_pylist() == [1.5, None]


def test_string_batches_past_int32_offsets_are_refused(monkeypatch):
    import esmpipe.commands.ingest as ingest

    monkeypatch.setattr(ingest, "_INT32_MAX", 5)
    assert column_array(["abc", "def"], pa.large_string()).to_pylist() == ["abc", "def"]
    with pytest.raises(ValueError, match="large_string"):
        column_array(["abc", "def"], pa.string())


@pytest.mark.parametrize("values", [COLUMNS["strings"], COLUMNS["late non-ascii"]])
def test_known_lengths_give_the_same_array(values):
    want = pa.array(values, type=pa.large_string())
    assert column_array(values, pa.large_string(), [len(v) for v in values]).equals(want)
    # Lengths that do not add up to the values' (checked per piece) are not used.
    wrong = [len(v) + (i == 2) for i, v in enumerate(values)]
    assert column_array(values, pa.large_string(), wrong).equals(want)
