"""ESM-2 embeddings and language-model scores, every requested output from one forward pass.

What a sequence gets (`EmbedSpec`, from `--layers`, `--include`, `--lm-score`):
- `embedding`: the mean over its residues (BOS, EOS excluded) of the first
  requested layer's hidden state, in float32; `layer_<N>`: the same mean of each
  further requested layer;
- `bos`: the BOS (<cls>) vector and `per_residue`: the residue matrix [L, C]
  (stored as float16), both of the first requested layer;
- `mean_log_prob` (`--lm-score unmasked` or `pseudo`): the mean over residues
  of log p(residue) from the LM head on the unmasked sequence (the same pass);
  `pseudo_perplexity` (`pseudo`): exp(-mean_i log p(x_i | x with residue i
  masked)), one masked copy per residue, the copies of a sequence batched
  together;
- `windowed`: whether it was cut into windows (below).

Layers are indices into the reference's `hidden_states`: 0 the embedding
output, k the output of layer k, N (= -1) the final normed output
(`last_hidden_state`); negative values count from the end (-1 is N, -2 is N-1).
The forward stops at the deepest requested layer (or runs to N for LM scores)
and keeps only the requested hidden states.

How it runs: sequences are packed without padding (`EsmModel.forward_packed`:
the tokens of a batch concatenated, attention within each sequence), so the
token budget `max_tokens` counts real tokens and results never depend on what
else is in a batch. Batches are cut longest first (`make_batches`). The default
budget depends on the device (`default_max_tokens`): small on the CPU, where
smaller matrices stay in cache, large on a GPU.

Windows: a sequence longer than the model's window (`default_window`: 1022
residues for ESM-2, the training crop; the position table's limit for absolute
positions) is embedded in overlapping windows of that size, evenly spaced, each
overlap at least a quarter window. Each residue's values (hidden states,
log-probabilities) are the mean over the windows that cover it; the pooled
outputs are taken over these merged residues, BOS is the mean of the windows'
BOS vectors, and the row has `windowed` = true. `max_length` (`--max-length`)
still gives `too_long` to what is longer than the user's own limit.

Out of memory on a batch splits it in halves down to single pieces
(`esmpipe.engine.runner`); a piece that still does not fit gives its sequence
status "out_of_memory". Non-finite outputs (half precision overflow) give
"non_finite".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from esmpipe.engine.batching import embed_cost, make_batches
from esmpipe.engine.device import free_device_memory, is_oom, release_free_memory
from esmpipe.engine.runner import Progress, run_batches
from esmpipe.status import NON_FINITE, OK, OUT_OF_MEMORY, TOO_LONG

if TYPE_CHECKING:
    from esmpipe.models import EsmConfig, EsmTokenizer

log = logging.getLogger(__name__)

# Bump when a change alters the values this engine writes: cached results carry it,
# and a cache part of another version is computed again.
# 2: several layers, BOS, per-residue, LM scores, windows for long sequences; the
#    packed (padding-free) forward.
OUTPUT_VERSION = 2

ROTARY_DEFAULT_WINDOW = 1022
INCLUDE_CHOICES = ("mean", "bos", "per_residue")
LM_SCORES = ("none", "unmasked", "pseudo")

# Token budgets per batch when --max-tokens is not given. CPU: on the 2-core CPU of
# issue 7, 16,384 ran about 10% slower than 4,096 (smaller matrices stay in cache);
# other sizes not measured. CUDA: large batches keep the GPU busy (not measured yet).
CPU_MAX_TOKENS = 4096
CUDA_MAX_TOKENS = 32768


def default_window(config: EsmConfig) -> int:
    """Residues per forward (the window size for longer sequences).

    - rotary (ESM-2): 1022, the training crop (1024 tokens with BOS/EOS), beyond
      which quality is untested;
    - absolute positions: the position table holds `max_position_embeddings` rows
      and real tokens start at `pad_token_id + 1`, so at most
      `max_position_embeddings - pad_token_id - 1` tokens, two of them specials.
    """
    if config.position_embedding_type == "rotary":
        return ROTARY_DEFAULT_WINDOW
    pad = config.pad_token_id if config.pad_token_id is not None else 1
    return config.max_position_embeddings - pad - 1 - 2


# The former name: the limit is now the window size, not a rejection.
default_max_length = default_window


def default_max_tokens(device: torch.device) -> int:
    return CUDA_MAX_TOKENS if device.type == "cuda" else CPU_MAX_TOKENS


def resolve_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Requested layers -> distinct non-negative hidden-state indices, in request order."""
    if not layers:
        raise ValueError("--layers: give at least one layer")
    resolved: list[int] = []
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"--layers {layer}: the model has hidden states 0..{num_layers} "
                f"(negative: -1..-{num_layers + 1} from the end)"
            )
        index = layer if layer >= 0 else num_layers + 1 + layer
        if index not in resolved:
            resolved.append(index)
    return tuple(resolved)


def window_bounds(length: int, window: int) -> list[tuple[int, int]]:
    """(start, end) residue ranges covering `length`: one if it fits, else windows of
    `window` residues, evenly spaced, neighbours overlapping by at least window // 4."""
    if length <= window:
        return [(0, length)]
    overlap = window // 4
    count = math.ceil((length - overlap) / (window - overlap))
    starts = [round(j * (length - window) / (count - 1)) for j in range(count)]
    return [(s, s + window) for s in starts]


@dataclass(frozen=True)
class EmbedSpec:
    """What to compute: resolved layers (the first gives `embedding`, `bos`,
    `per_residue`), and which extra outputs."""

    layers: tuple[int, ...]
    bos: bool = False
    per_residue: bool = False
    lm_score: str = "none"

    @property
    def further_layers(self) -> tuple[int, ...]:
        return self.layers[1:]


@dataclass
class EmbedResult:
    status: str
    embedding: np.ndarray | None = None  # [C] float32 when status == "ok"
    layers: dict[int, np.ndarray] = field(default_factory=dict)  # further layer -> [C]
    bos: np.ndarray | None = None  # [C] float32
    per_residue: np.ndarray | None = None  # [L, C] float16
    mean_log_prob: float | None = None
    pseudo_perplexity: float | None = None
    windowed: bool = False


@dataclass
class _Piece:
    """One forward's worth of a sequence: residues start:end, each weighted by 1 over
    the number of windows covering it."""

    seq: int
    start: int
    end: int
    weights: np.ndarray  # [end - start] float32

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class _PieceOut:
    sums: dict[int, np.ndarray]  # layer -> [C] weighted sum over the piece's residues
    bos: np.ndarray | None  # [C]
    residues: np.ndarray | None  # [l, C] float32 of the first layer
    log_probs: np.ndarray | None  # [l] log p(residue), unmasked


class _Pending:
    """A sequence's results while its pieces come in."""

    def __init__(self, length: int, pieces: int) -> None:
        self.length = length
        self.left = pieces
        self.pieces = pieces
        self.failed = False
        self.sums: dict[int, np.ndarray] = {}
        self.bos: np.ndarray | None = None
        self.residues: np.ndarray | None = None
        self.log_prob_sum = 0.0
        self.masked_sum = 0.0
        self.masked_left = 0


class Embedder:
    """Embeddings and LM scores from an `EsmModel` (or `EsmForMaskedLM`, needed for
    LM scores) and its `EsmTokenizer`.

    The model is used as given (device, dtype, eval mode are the caller's; see
    `esmpipe.engine.device`). `max_tokens`: real tokens per batch (default: by
    device). `max_length`: longer sequences get "too_long" (default: none).
    `window`: residues per forward (default: `default_window`). `layer` is the
    former single-layer argument (an alias of `layers=[layer]`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: EsmTokenizer,
        *,
        layers: Sequence[int] | None = None,
        include: Sequence[str] = ("mean",),
        lm_score: str = "none",
        max_tokens: int | None = None,
        max_length: int | None = None,
        window: int | None = None,
        layer: int | None = None,
    ) -> None:
        encoder = getattr(model, "esm", model)
        self.encoder = encoder
        self.lm_head = getattr(model, "lm_head", None)
        config = encoder.config
        if layers is None:
            layers = [layer if layer is not None else -1]
        unknown = sorted(set(include) - set(INCLUDE_CHOICES))
        if unknown:
            raise ValueError(f"--include {','.join(unknown)}: choose from "
                             f"{', '.join(INCLUDE_CHOICES)}")  # fmt: skip
        if lm_score not in LM_SCORES:
            raise ValueError(f"--lm-score {lm_score}: choose from {', '.join(LM_SCORES)}")
        if lm_score != "none" and self.lm_head is None:
            raise ValueError(f"--lm-score {lm_score} needs the language-model head: load the "
                             "checkpoint as EsmForMaskedLM")  # fmt: skip
        self.num_layers = config.num_hidden_layers
        self.spec = EmbedSpec(resolve_layers(layers, self.num_layers), bos="bos" in include,
                              per_residue="per_residue" in include,
                              lm_score=lm_score)  # fmt: skip
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens if max_tokens is not None else default_max_tokens(self.device)
        if self.max_tokens <= 0:
            raise ValueError(f"--max-tokens must be positive, got {self.max_tokens}")
        limit = default_window(config)
        self.window = window if window is not None else limit
        if not 1 <= self.window <= limit and config.position_embedding_type != "rotary":
            raise ValueError(f"window {self.window}: absolute positions allow at most {limit}")
        if self.window < 4:
            raise ValueError(f"window {self.window}: at least 4 residues")
        self.max_length = max_length
        self.hidden_size = config.hidden_size
        # The forward runs to the deepest requested layer, or to the end for the LM head.
        keep = set(self.spec.layers)
        if lm_score != "none":
            keep.add(self.num_layers)
        self.keep = frozenset(keep)
        self.mask_token_id = tokenizer.mask_token_id

    @property
    def layer(self) -> int:
        """The first requested layer (resolved), as the former single-layer engine had."""
        return self.spec.layers[0]

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    # -- one batch ----------------------------------------------------------------

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Packed ids on the device, tokens per text, and the [T] bool residue mask."""
        ids, lengths = self.tokenizer.encode_packed(texts)
        residue = torch.ones(ids.shape[0], dtype=torch.bool)
        ends = torch.cumsum(torch.as_tensor(lengths, dtype=torch.long), 0)
        residue[ends - torch.as_tensor(lengths, dtype=torch.long)] = False
        residue[ends - 1] = False
        return ids.to(self.device, non_blocking=True), lengths, residue

    @torch.inference_mode()
    def _forward(self, pieces: list[_Piece]) -> list[_PieceOut]:
        """Outputs of one batch of pieces (one packed forward)."""
        texts = [self._sequences[p.seq][p.start : p.end] for p in pieces]
        ids, lengths, residue_cpu = self._encode(texts)
        states = self.encoder.forward_packed(ids, lengths, self.keep)
        residue = residue_cpu.to(self.device)
        n = len(pieces)
        tokens = torch.as_tensor(lengths, dtype=torch.long)
        starts = (torch.cumsum(tokens, 0) - tokens).to(self.device)
        # [R]: the piece of each residue token and its weight
        piece_of = torch.repeat_interleave(torch.arange(n), tokens - 2).to(self.device)
        weights = torch.from_numpy(np.concatenate([p.weights for p in pieces])).to(self.device)
        first = self.spec.layers[0]
        sums: dict[int, np.ndarray] = {}
        for layer in self.spec.layers:
            # [R, C] in float32, so half-precision models do not lose precision in the mean
            h = states[layer][residue].float()
            pooled = torch.zeros(n, h.shape[1], device=h.device, dtype=torch.float32)
            pooled.index_add_(0, piece_of, h * weights[:, None])
            sums[layer] = pooled.cpu().numpy()
        bos = states[first][starts].float().cpu().numpy() if self.spec.bos else None
        residues = None
        if self.spec.per_residue:
            residues = states[first][residue].float().cpu().numpy()
        log_probs = None
        if self.spec.lm_score != "none":
            # [R, V] only at residues: the LM head never runs on BOS/EOS
            logits = self.lm_head(states[self.num_layers][residue]).float()
            picked = F.log_softmax(logits, dim=-1).gather(1, ids[residue][:, None])[:, 0]
            log_probs = picked.cpu().numpy()
        bounds = np.cumsum([0, *[p.length for p in pieces]])
        return [
            _PieceOut(
                sums={layer: sums[layer][i] for layer in sums},
                bos=None if bos is None else bos[i],
                residues=None if residues is None else residues[bounds[i] : bounds[i + 1]],
                log_probs=None if log_probs is None else log_probs[bounds[i] : bounds[i + 1]],
            )
            for i in range(n)
        ]

    @torch.inference_mode()
    def _forward_masked(self, copies: list[tuple[_Piece, int]]) -> list[float]:
        """log p(x_i | x with residue i masked) for each (piece, i): one masked copy each."""
        texts = [self._sequences[p.seq][p.start : p.end] for p, _ in copies]
        ids, lengths, _ = self._encode(texts)
        tokens = torch.as_tensor(lengths, dtype=torch.long)
        at = (torch.cumsum(tokens, 0) - tokens) + 1 + torch.as_tensor([i for _, i in copies])
        at = at.to(self.device)
        targets = ids[at].clone()
        ids[at] = self.mask_token_id
        states = self.encoder.forward_packed(ids, lengths, {self.num_layers})
        logits = self.lm_head(states[self.num_layers][at]).float()
        picked = F.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        return picked.cpu().tolist()

    # -- whole runs ----------------------------------------------------------------

    def embed(self, sequences: Sequence[str]) -> list[EmbedResult]:
        """One result per input sequence, in input order."""
        results: list[EmbedResult | None] = [None] * len(sequences)
        for indices, batch in self.run(sequences):
            for i, result in zip(indices, batch, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _pieces(self, index: int, length: int) -> list[_Piece]:
        bounds = window_bounds(length, self.window)
        cover = np.zeros(length, dtype=np.float32)
        for start, end in bounds:
            cover[start:end] += 1
        return [_Piece(index, s, e, 1.0 / cover[s:e]) for s, e in bounds]

    def run(self, sequences: Sequence[str]) -> Iterator[tuple[list[int], list[EmbedResult]]]:
        """Results as `(indices into sequences, results)`: first the sequences over the
        length limit, then each sequence as soon as all its pieces are computed."""
        self._sequences = sequences
        limit = self.max_length
        runnable = [i for i, s in enumerate(sequences) if limit is None or len(s) <= limit]
        rejected = sorted(set(range(len(sequences))) - set(runnable))
        if rejected:
            yield rejected, [EmbedResult(TOO_LONG) for _ in rejected]
        pieces: list[_Piece] = []
        pending: dict[int, _Pending] = {}
        for i in runnable:
            own = self._pieces(i, len(sequences[i]))
            pending[i] = _Pending(len(sequences[i]), len(own))
            pieces.extend(own)
        lengths = [len(sequences[i]) for i in runnable]
        pseudo = self.spec.lm_score == "pseudo"
        costs = [n * (n + 2) + n if pseudo else n for n in lengths]
        cost_of = dict(zip(runnable, costs, strict=True))
        progress = Progress("embed", lengths, costs)
        batches = make_batches([p.length for p in pieces], self.max_tokens, embed_cost)
        for batch, outs in self._run_batches(
            batches, lambda members: self._forward([pieces[m] for m in members])
        ):
            members = [pieces[m] for m in batch]
            for piece, out in zip(members, outs, strict=True):
                self._add_piece(pending[piece.seq], piece, out)
            if pseudo:
                self._run_masked([p for p in members if not pending[p.seq].failed], pending)
            finished = sorted({p.seq for p in members if pending[p.seq].left == 0})
            if finished:
                results = [self._result(pending.pop(i)) for i in finished]
                progress.update(len(finished), sum(len(sequences[i]) for i in finished),
                                sum(cost_of[i] for i in finished))  # fmt: skip
                yield finished, results

    def _run_batches(self, batches, forward):
        """`run_batches` with this engine's out-of-memory handling: a batch that runs out
        of memory is split; a single piece that still does not fit yields None.

        On the CPU the heap's free pages go back to the kernel after each batch
        (`esmpipe.engine.device.release_free_memory`): activation sizes change with every batch and
        the holes they leave would otherwise stay resident, raising peak memory.
        """

        def run(members: list[int]) -> list:
            outs = forward(members)
            if self.device.type == "cpu":
                release_free_memory()
            return outs

        return run_batches(
            batches,
            run,
            is_oom=is_oom,
            free_memory=lambda: free_device_memory(self.device),
            out_of_memory=lambda member: None,
        )

    def _run_masked(self, members: list[_Piece], pending: dict[int, _Pending]) -> None:
        """The pseudo-perplexity pass over the pieces of one batch: every masked copy,
        copies of the same piece batched together (longest pieces first)."""
        copies = [(p, i) for p in members for i in range(p.length)]
        for p in members:
            pending[p.seq].masked_left += p.length
        batches = make_batches([p.length for p, _ in copies], self.max_tokens, embed_cost)
        for batch, values in self._run_batches(
            batches, lambda ms: self._forward_masked([copies[m] for m in ms])
        ):
            for m, value in zip(batch, values, strict=True):
                piece, i = copies[m]
                state = pending[piece.seq]
                state.masked_left -= 1
                if value is None:
                    state.failed = True
                else:
                    state.masked_sum += float(piece.weights[i]) * value

    def _add_piece(self, state: _Pending, piece: _Piece, out: _PieceOut | None) -> None:
        state.left -= 1
        if out is None:
            state.failed = True
            return
        if state.failed:
            return
        for layer, vector in out.sums.items():
            state.sums[layer] = state.sums.get(layer, 0.0) + vector
        if out.bos is not None:
            state.bos = (state.bos if state.bos is not None else 0.0) + out.bos / state.pieces
        if out.residues is not None:
            if state.residues is None:
                state.residues = np.zeros((state.length, out.residues.shape[1]), np.float32)
            state.residues[piece.start : piece.end] += out.residues * piece.weights[:, None]
        if out.log_probs is not None:
            state.log_prob_sum += float(np.dot(out.log_probs.astype(np.float64), piece.weights))

    def _result(self, state: _Pending) -> EmbedResult:
        if state.failed:
            return EmbedResult(OUT_OF_MEMORY)
        n = state.length
        means = {layer: (total / n).astype(np.float32) for layer, total in state.sums.items()}
        first = self.spec.layers[0]
        result = EmbedResult(
            OK,
            embedding=means[first],
            layers={layer: means[layer] for layer in self.spec.further_layers},
            bos=None if state.bos is None else np.asarray(state.bos, dtype=np.float32),
            per_residue=None if state.residues is None else state.residues.astype(np.float16),
            windowed=state.pieces > 1,
        )
        if self.spec.lm_score != "none":
            result.mean_log_prob = state.log_prob_sum / n
        if self.spec.lm_score == "pseudo":
            result.pseudo_perplexity = math.exp(-state.masked_sum / n)
        if not _finite(result):
            return EmbedResult(NON_FINITE, windowed=result.windowed)
        return result


def _finite(result: EmbedResult) -> bool:
    arrays = [result.embedding, result.bos, result.per_residue, *result.layers.values()]
    scalars = [result.mean_log_prob, result.pseudo_perplexity]
    return all(a is None or bool(np.isfinite(a).all()) for a in arrays) and all(
        s is None or math.isfinite(s) for s in scalars
    )
