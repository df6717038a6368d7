"""EsmTokenizer gives the reference tokenizer's ids for every input."""

from __future__ import annotations

import json
import random
import string

import pytest
import torch
import transformers

from esmpipe.models import EsmTokenizer
from esmpipe.models.config import ESM2_VOCAB

SPECIAL_STRINGS = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "<null_1>", "<mas", "<", ">"]


@pytest.fixture(scope="module")
def pair(esm2_vocab_file):
    return EsmTokenizer(esm2_vocab_file), transformers.EsmTokenizer(str(esm2_vocab_file))


def test_every_printable_ascii_char(pair):
    mine, ref = pair
    for char in string.printable:
        for text in (char, f"A{char}C", f"{char}{char}M", f"a{char}"):
            assert mine(text)["input_ids"] == ref(text)["input_ids"], repr(text)
            assert mine.tokenize(text) == ref.tokenize(text), repr(text)


def test_random_strings(pair):
    mine, ref = pair
    rng = random.Random(0)
    alphabet = (
        list(string.printable)
        + list("ACDEFGHIKLMNPQRSTVWYXBUZO") * 4
        + SPECIAL_STRINGS
        + ["\u00a0", "é"]
    )
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert mine(text)["input_ids"] == ref(text)["input_ids"], repr(text)
        assert (
            mine(text, add_special_tokens=False)["input_ids"]
            == ref(text, add_special_tokens=False)["input_ids"]
        ), repr(text)


@pytest.mark.parametrize(
    "text, expected_ids",
    [
        ("ACD", [0, 5, 23, 13, 2]),
        ("acd", [0, 3, 2]),  # a lowercase run is ONE unknown token
        ("aBc", [0, 3, 25, 3, 2]),
        ("A C\tD", [0, 5, 23, 13, 2]),  # whitespace is dropped
        ("AJC", [0, 5, 3, 23, 2]),  # J is not in the vocabulary
        ("A<mask>C", [0, 5, 32, 23, 2]),
        ("<mas<mask>", [0, 3, 32, 2]),
    ],
)
def test_documented_cases(pair, text, expected_ids):
    mine, ref = pair
    assert mine(text)["input_ids"] == expected_ids == ref(text)["input_ids"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=True),
        dict(padding="longest", return_special_tokens_mask=True),
        dict(padding="max_length", max_length=12),
        dict(padding=True, truncation=True, max_length=5, return_special_tokens_mask=True),
        dict(truncation=True, max_length=4),
        dict(padding=True, return_tensors="pt"),
        dict(
            padding="max_length",
            max_length=10,
            truncation=True,
            return_tensors="pt",
            return_special_tokens_mask=True,
        ),
        dict(add_special_tokens=False, padding=True),
    ],
)
def test_batches_match_reference(pair, kwargs):
    mine, ref = pair
    batch = ["MKTAYIAK", "AC", "LLLLGGGGVV", ""]
    a, b = mine(batch, **kwargs), ref(batch, **kwargs)
    assert set(a) == set(b)
    for key in b:
        if kwargs.get("return_tensors") == "pt":
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    assert a.input_ids is a["input_ids"]


def test_single_string_and_pairs(pair):
    mine, ref = pair
    assert mine("MKT")["input_ids"] == ref("MKT")["input_ids"]
    assert torch.equal(
        mine("MKT", return_tensors="pt")["input_ids"], ref("MKT", return_tensors="pt")["input_ids"]
    )
    assert mine("AC", "DE")["input_ids"] == ref("AC", "DE")["input_ids"]
    a = mine("ACDEF", "GH", return_token_type_ids=True, truncation=True, max_length=6)
    b = ref("ACDEF", "GH", return_token_type_ids=True, truncation=True, max_length=6)
    assert a == dict(b)


def test_helpers_match_reference(pair):
    mine, ref = pair
    ids = [5, 6, 7]
    assert mine.build_inputs_with_special_tokens(ids) == ref.build_inputs_with_special_tokens(ids)
    assert mine.build_inputs_with_special_tokens(ids, [8]) == ref.build_inputs_with_special_tokens(
        ids, [8]
    )
    assert mine.get_special_tokens_mask(ids, [8]) == ref.get_special_tokens_mask(ids, [8])
    with_special = [0, 5, 32, 2, 1]
    assert mine.get_special_tokens_mask(
        with_special, already_has_special_tokens=True
    ) == ref.get_special_tokens_mask(with_special, already_has_special_tokens=True)
    assert mine.create_token_type_ids_from_sequences(
        ids, [8]
    ) == ref.create_token_type_ids_from_sequences(ids, [8])
    assert mine.encode("MKV") == ref.encode("MKV")
    for skip in (False, True):
        assert mine.decode([0, 5, 6, 2, 99], skip_special_tokens=skip) == ref.decode(
            [0, 5, 6, 2, 99], skip_special_tokens=skip
        )
    assert mine.convert_tokens_to_ids(["A", "foo", "<mask>"]) == ref.convert_tokens_to_ids(
        ["A", "foo", "<mask>"]
    )
    assert mine.convert_tokens_to_ids("A") == ref.convert_tokens_to_ids("A")
    assert mine.convert_ids_to_tokens([0, 5, 99]) == ref.convert_ids_to_tokens([0, 5, 99])
    assert sorted(mine.all_special_ids) == sorted(ref.all_special_ids)
    assert mine.get_vocab() == ref.get_vocab()
    for name in (
        "pad_token_id",
        "cls_token_id",
        "eos_token_id",
        "mask_token_id",
        "unk_token_id",
        "vocab_size",
    ):
        assert getattr(mine, name) == getattr(ref, name), name


def test_save_and_load_both_ways(pair, tmp_path):
    mine, ref = pair
    mine.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert (tmp_path / "ours" / "vocab.txt").read_text() == "\n".join(ESM2_VOCAB)
    json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    theirs_from_ours = transformers.EsmTokenizer.from_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    ours_from_theirs = EsmTokenizer.from_pretrained(tmp_path / "theirs")
    text = ["MK<mask>TAYx", "ACD"]
    expected = ref(text, padding=True)
    assert theirs_from_ours(text, padding=True)["input_ids"] == expected["input_ids"]
    assert ours_from_theirs(text, padding=True)["input_ids"] == expected["input_ids"]
    (path,) = mine.save_vocabulary(tmp_path, "prefix")
    assert path.endswith("prefix-vocab.txt")


def test_errors(pair):
    mine, _ = pair
    with pytest.raises(ValueError, match="padding=True"):
        mine(["A", "AC"], return_tensors="pt")
    with pytest.raises(ValueError, match="max_length"):
        mine(["A"], padding="max_length")


def test_vocabulary_without_special_tokens(tmp_path):
    """Special tokens missing from vocab.txt are appended after it, in the reference's order."""
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join([*"ARNDCQEGHILKMFPSTWYV", "X"]))
    mine, ref = EsmTokenizer(path), transformers.EsmTokenizer(str(path))
    assert mine.get_vocab() == ref.get_vocab()
    assert (mine.vocab_size, len(mine)) == (ref.vocab_size, len(ref)) == (21, 26)
    for text in (["ARX<mask>", "A"], ["<cls>VV<eos>", "WY"]):
        assert mine(text, padding=True) == dict(ref(text, padding=True))
    assert mine("AJ", add_special_tokens=False)["input_ids"] == [0, mine.unk_token_id]
    mine.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "vocab.txt").read_text() == path.read_text()
