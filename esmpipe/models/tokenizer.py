"""`EsmTokenizer`: one token per residue, read from `vocab.txt` (one token per line).

How text becomes tokens (the same ids as the reference tokenizer for any input):

1. Every vocabulary entry is matched verbatim, leftmost and longest first, so
   residues (`A`, `C`, ...), gap/stop symbols and special-token strings written
   into the text (`<mask>`, `<cls>`, ...) each become one token.
2. The text between matches is split on whitespace, and each remaining word is
   one token; it is not in the vocabulary, so it becomes `<unk>`.

Consequences worth knowing: whitespace is dropped; lowercase letters are not in
the ESM vocabularies, so a lowercase *run* ("acd") becomes a single `<unk>`
(the sequence gets shorter!) and "aBc" becomes `<unk> B <unk>`; an unknown
character next to residues ("AJC") becomes its own `<unk>`. Upper-case the
sequences first if lowercase means residues to you.

Special tokens that vocab.txt lacks (some folding vocabularies) are appended
after it, as the reference does: ids len(vocab), len(vocab)+1, ... in the order
<eos>, <unk>, <pad>, <cls>, <mask>.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from esmpipe.models.config import write_text_atomic

VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

_SPECIAL_NAMES = ("unk_token", "cls_token", "pad_token", "mask_token", "eos_token")
_ADDED_ORDER = ("eos_token", "unk_token", "pad_token", "cls_token", "mask_token")


class BatchEncoding(dict):
    """The tokenizer's output: a dict (`input_ids`, `attention_mask`, ...) with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        return BatchEncoding(
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()}
        )


def load_vocab_file(path: str | os.PathLike) -> list[str]:
    """One token per line, surrounding whitespace stripped (as the reference reads it)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]


class EsmTokenizer:
    """Tokenizer for ESM protein language models (see the module docstring for the rules)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        vocab: Sequence[str] | None = None,
        unk_token: str = "<unk>",
        cls_token: str = "<cls>",
        pad_token: str = "<pad>",
        mask_token: str = "<mask>",
        eos_token: str = "<eos>",
        model_max_length: int | None = None,
    ) -> None:
        if (vocab_file is None) == (vocab is None):
            raise ValueError("pass exactly one of vocab_file and vocab")
        self.all_tokens = (
            load_vocab_file(vocab_file) if vocab is None else [t.strip() for t in vocab]
        )
        self._token_to_id = {tok: i for i, tok in enumerate(self.all_tokens)}
        self._id_to_token = dict(enumerate(self.all_tokens))
        self.unk_token, self.cls_token, self.pad_token = unk_token, cls_token, pad_token
        self.mask_token, self.eos_token = mask_token, eos_token
        # Special tokens missing from vocab.txt get the next ids, in the reference's
        # order; they are not part of vocab_size or of the saved vocab.txt.
        for name in _ADDED_ORDER:
            token = getattr(self, name)
            if token not in self._token_to_id:
                self._token_to_id[token] = len(self._token_to_id)
                self._id_to_token[self._token_to_id[token]] = token
        self.model_max_length = model_max_length
        self._max_token_len = max((len(t) for t in self.all_tokens), default=1)

    # -- vocabulary ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.all_tokens)

    def __len__(self) -> int:
        """Vocabulary plus special tokens appended to it."""
        return len(self._token_to_id)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._token_to_id)

    @property
    def unk_token_id(self) -> int:
        return self._token_to_id[self.unk_token]

    @property
    def cls_token_id(self) -> int:
        return self._token_to_id[self.cls_token]

    @property
    def pad_token_id(self) -> int:
        return self._token_to_id[self.pad_token]

    @property
    def mask_token_id(self) -> int:
        return self._token_to_id[self.mask_token]

    @property
    def eos_token_id(self) -> int:
        return self._token_to_id[self.eos_token]

    @property
    def all_special_tokens(self) -> list[str]:
        return [getattr(self, name) for name in _SPECIAL_NAMES]

    @property
    def all_special_ids(self) -> list[int]:
        return [self._token_to_id[t] for t in self.all_special_tokens]

    def token_to_id(self, token: str) -> int:
        # NOTE: when <unk> is not in vocab.txt the reference returns None for unknown
        # tokens; we return the id <unk> was appended at.
        return self._token_to_id.get(token, self.unk_token_id)

    def id_to_token(self, index: int) -> str:
        return self._id_to_token.get(index, self.unk_token)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        if isinstance(ids, int):
            return self.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.id_to_token(int(i)) for i in ids if int(i) not in special]

    # -- text -> tokens -------------------------------------------------------------

    def residue_lookup(self) -> torch.Tensor:
        """[256] int64: byte -> id of the one-character token it spells, else <unk>."""
        if getattr(self, "_lookup", None) is None:
            table = torch.full((256,), self.unk_token_id, dtype=torch.long)
            for token, index in self._token_to_id.items():
                if len(token) == 1 and ord(token) < 256 and not token.isspace():
                    table[ord(token)] = index
            self._lookup = table
        return self._lookup

    def encode_packed(self, sequences: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """`<cls> residues <eos>` of every sequence, one after the other, without padding.

        Every character is one token (its one-character vocabulary entry, else
        <unk>), as when the letters are spaced out: the ids equal
        `self(" ".join(seq))["input_ids"]` per sequence, with no Python loop per
        character. Returns ids [T] (int64) and tokens per sequence (length + 2).
        """
        lengths = [len(seq) for seq in sequences]
        # NOTE: a character outside ASCII becomes one "?" (one residue, <unk>).
        raw = b"".join(seq.encode("ascii", "replace") for seq in sequences)
        residues = torch.empty(0, dtype=torch.long)
        if raw:
            codes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
            residues = self.residue_lookup()[codes]
        tokens = torch.as_tensor([n + 2 for n in lengths], dtype=torch.long)
        total = int(tokens.sum())
        starts = torch.cumsum(tokens, 0) - tokens
        ids = torch.empty(total, dtype=torch.long)
        special = torch.zeros(total, dtype=torch.bool)
        special[starts] = True
        special[starts + tokens - 1] = True
        ids[starts] = self.cls_token_id
        ids[starts + tokens - 1] = self.eos_token_id
        ids[~special] = residues
        return ids, [n + 2 for n in lengths]

    def tokenize(self, text: str) -> list[str]:
        """Split text into tokens (vocabulary entries and whitespace-free unknown words)."""
        tokens: list[str] = []
        pending_start = 0
        i = 0
        while i < len(text):
            match = None
            for size in range(min(self._max_token_len, len(text) - i), 0, -1):
                if text[i : i + size] in self._token_to_id:
                    match = text[i : i + size]
                    break
            if match is None:
                i += 1
                continue
            tokens.extend(text[pending_start:i].split())
            tokens.append(match)
            i += len(match)
            pending_start = i
        tokens.extend(text[pending_start:].split())
        return tokens

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """<cls> A <eos>, or <cls> A <eos> B <eos> for a pair."""
        cls, eos = [self.cls_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return cls + list(token_ids_0) + eos
        return cls + list(token_ids_0) + eos + list(token_ids_1) + eos

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for a special token, 0 for a residue."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "token_ids_1 must be None when the ids already hold special tokens"
                )
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 over <cls> A <eos>, 1 over B <eos>."""
        first = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is None:
            return first
        return first + [1] * (len(token_ids_1) + 1)

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> list[int]:
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            truncation=truncation,
            max_length=max_length,
        )["input_ids"]

    def decode(
        self, token_ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False
    ) -> str:
        """Tokens joined by single spaces, as the reference writes them."""
        if torch.is_tensor(token_ids):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return " ".join(self.convert_ids_to_tokens(list(token_ids), skip_special_tokens))

    def batch_decode(
        self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_special_tokens_mask: bool = False,
        return_token_type_ids: bool = False,
    ) -> BatchEncoding:
        """Encode one string or a list of strings (optionally pairs).

        padding: False, True/"longest" or "max_length" (needs max_length).
        truncation: True/"longest_first" cuts residues (never special tokens) so each
        row fits max_length (or model_max_length when max_length is None).
        return_tensors: None (lists) or "pt" ([B, L] tensors; [1, L] for one string).
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs: list[str | None]
        if text_pair is None:
            pairs = [None] * len(texts)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError("text and text_pair must have the same number of sequences")
        if padding is True:
            padding = "longest"
        if padding not in (False, "longest", "max_length", "do_not_pad"):
            raise ValueError(
                f"padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        limit = max_length if max_length is not None else self.model_max_length
        if truncation not in (False, True, "longest_first", "do_not_truncate"):
            raise ValueError(f"truncation strategy {truncation!r} is not supported")
        do_truncate = truncation in (True, "longest_first") and limit is not None

        rows: list[dict[str, list[int]]] = []
        for first, second in zip(texts, pairs, strict=True):
            a = self.convert_tokens_to_ids(self.tokenize(first))
            b = self.convert_tokens_to_ids(self.tokenize(second)) if second is not None else None
            if do_truncate:
                n_special = (3 if b is not None else 2) if add_special_tokens else 0
                a, b = _truncate(a, b, limit - n_special)
            if add_special_tokens:
                ids = self.build_inputs_with_special_tokens(a, b)
                special = self.get_special_tokens_mask(a, b)
                types = self.create_token_type_ids_from_sequences(a, b)
            else:
                ids = a + (b or [])
                special = [0] * len(ids)
                types = [0] * len(a) + [1] * len(b or [])
            rows.append(
                {
                    "input_ids": ids,
                    "token_type_ids": types,
                    "special_tokens_mask": special,
                    "attention_mask": [1] * len(ids),
                }
            )

        if padding in ("longest", "max_length") and rows:
            target = max(len(r["input_ids"]) for r in rows) if padding == "longest" else max_length
            for r in rows:
                extra = max(0, target - len(r["input_ids"]))
                r["input_ids"] += [self.pad_token_id] * extra
                r["token_type_ids"] += [0] * extra
                r["special_tokens_mask"] += [1] * extra
                r["attention_mask"] += [0] * extra

        keys = ["input_ids"]
        if return_token_type_ids:
            keys.append("token_type_ids")
        if return_special_tokens_mask:
            keys.append("special_tokens_mask")
        if return_attention_mask:
            keys.append("attention_mask")
        out = BatchEncoding()
        for key in keys:
            values = [r[key] for r in rows]
            if return_tensors == "pt":
                if len({len(v) for v in values}) > 1:
                    raise ValueError(
                        "sequences have different lengths; pass padding=True to return tensors"
                    )
                out[key] = torch.tensor(values, dtype=torch.long)
            elif return_tensors is None:
                out[key] = values[0] if single else values
            else:
                raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        return out

    # -- files ----------------------------------------------------------------------

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str]:
        """Write vocab.txt (one token per line, no trailing newline, as the reference does)."""
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        path = Path(save_directory) / name
        write_text_atomic(path, "\n".join(self.all_tokens))
        return (str(path),)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write vocab.txt, tokenizer_config.json and special_tokens_map.json."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        specials = {name: getattr(self, name) for name in _SPECIAL_NAMES}
        config: dict[str, Any] = {"tokenizer_class": "EsmTokenizer", **specials}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        write_text_atomic(folder / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        write_text_atomic(folder / SPECIAL_TOKENS_MAP_FILE, json.dumps(specials, indent=2) + "\n")
        (vocab,) = self.save_vocabulary(folder)
        return (vocab, str(folder / TOKENIZER_CONFIG_FILE), str(folder / SPECIAL_TOKENS_MAP_FILE))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
    ) -> EsmTokenizer:
        """Read vocab.txt (and the special tokens, if configured) from a folder or hub id."""
        from esmpipe.models.hub import resolve_file

        kwargs = dict(
            revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        vocab = resolve_file(name_or_path, VOCAB_FILE, **kwargs)
        if vocab is None:
            raise FileNotFoundError(f"{name_or_path}: no {VOCAB_FILE} found")
        options: dict[str, Any] = {}
        for filename in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
            path = resolve_file(name_or_path, filename, **kwargs)
            if path is None:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
            for name in _SPECIAL_NAMES:
                value = data.get(name)
                if isinstance(value, dict):  # serialised AddedToken
                    value = value.get("content")
                if isinstance(value, str):
                    options[name] = value
            max_len = data.get("model_max_length")
            # The reference writes a huge sentinel for "no limit".
            if isinstance(max_len, int) and max_len < 10**12:
                options["model_max_length"] = max_len
        return cls(vocab, **options)


def _truncate(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut tokens from the end (of the longer sequence first) until a (+ b) fits budget."""
    budget = max(budget, 0)
    if b is None:
        return a[:budget], None
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b
