"""`EsmForProteinFolding`: ESMFold, an ESM-2 stem followed by the folding trunk and heads.

Parameter names equal the keys of `facebook/esmfold_v1` (and of the
`transformers` port): `esm.*` (the stem), `esm_s_combine`, `esm_s_mlp.*`,
`embedding.weight`, `trunk.*`, `distogram_head.*`, `ptm_head.*`, `lm_head.*`,
`lddt_head.*` and the `af2_to_esm` buffer, so loading is a plain copy.

Inputs follow the reference: residue indices in AlphaFold2 order
(`ARNDCQEGHILKMFPSTWYV`, 20 = unknown); `infer` takes amino-acid strings.

Precision: with `esmfold_config.fp16_esm` the stem is built in fp16, as the
reference does in its constructor; the trunk, heads and geometry stay fp32.
`from_pretrained(dtype=None)` casts each checkpoint tensor to the dtype of the
parameter it fills, so the published checkpoint's fp16 stem tensors stay fp16
under `fp16_esm = true` and are upcast to fp32 under `fp16_esm = false`. An
explicit `dtype` casts the whole model, stem included. To run an fp32-built
stem in fp16 afterwards (half the stem's memory), call `model.esm.half()`:
`forward` casts the stem's features to the trunk's dtype. `stem_dtype` (a
constructor keyword, so also `from_pretrained(..., stem_dtype=torch.float16)`)
builds the stem in that dtype before loading, so its weights are loaded straight
into it. The pTM/PAE head and the pLDDT expectations always run in fp32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from esmpipe.models.config import EsmConfig
from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.confidence import (
    plddt_from_logits,
    predicted_aligned_error,
    predicted_tm,
)
from esmpipe.models.esmfold.geometry import atom14_to_atom37, make_atom14_masks
from esmpipe.models.esmfold.heads import DISTOGRAM_BINS, LddtHead, symmetric_distogram
from esmpipe.models.esmfold.ipa import InvariantPointAttention
from esmpipe.models.esmfold.trunk import FoldingTrunk
from esmpipe.models.modeling_esm import EsmModel
from esmpipe.models.pretrained import EsmPreTrainedModel, ModelOutput

# Embedding vocabulary of the folding input: 0 is padding, 1..20 the residues,
# 21 unknown, 22 mask (the reference's `n_tokens_embed = restype_num + 3`).
N_TOKENS_EMBED = rc.restype_num + 3
PAD_IDX = 0
UNK_IDX = N_TOKENS_EMBED - 2
MASK_IDX = N_TOKENS_EMBED - 1


@dataclasses.dataclass
class EsmForProteinFoldingOutput(ModelOutput):
    """Outputs of `EsmForProteinFolding`; N_sm is the number of structure-module blocks.

    Fields (shapes as the reference's unless noted):
        frames [N_sm, B, L, 7] backbone frames (quaternion, translation in Angstrom).
        sidechain_frames [N_sm, B, L, 8, 4, 4] rigid-group frames.
        unnormalized_angles, angles [N_sm, B, L, 7, 2] torsions as (sin, cos).
        positions [N_sm, B, L, 14, 3] atom14 coordinates (Angstrom).
        states [N_sm, B, L, C_sm] structure-module single states.
        s_s [B, L, C_s], s_z [B, L, L, C_z] trunk outputs.
        distogram_logits [B, L, L, 64], lm_logits [B, L, 23].
        aatype [B, L]; atom14_atom_exists [B, L, 14]; residx_atom14_to_atom37 [B, L, 14];
        residx_atom37_to_atom14 [B, L, 37]; atom37_atom_exists [B, L, 37] (zero on padding,
        and after `infer` on chain linkers); residue_index [B, L].
        lddt_head [N_sm, B, L, 37, 50] logits; plddt [B, L, 37] on a 0-1 scale.
        ptm_logits [B, L, L, 64]; aligned_confidence_probs [B, L, L, 64];
        predicted_aligned_error [B, L, L] (Angstrom).
        ptm [B], max_predicted_aligned_error [B]: NOTE one value per protein, computed
        on its own residues (the reference gives one number for the whole batch).
        mean_plddt [B]: mean of `plddt` over the atoms of `atom37_atom_exists`, 0-1
        scale (the reference's `infer` definition, on its 0-1 pLDDT scale).
        chain_index [B, L]: chain of each position, -1 on padding (only from `infer`).
        recycles []: long scalar, the recycles actually run (passes - 1; fewer than
        asked only under the trunk's opt-in early stop).
    """

    frames: torch.Tensor | None = None
    sidechain_frames: torch.Tensor | None = None
    unnormalized_angles: torch.Tensor | None = None
    angles: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    states: torch.Tensor | None = None
    s_s: torch.Tensor | None = None
    s_z: torch.Tensor | None = None
    distogram_logits: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    aatype: torch.Tensor | None = None
    atom14_atom_exists: torch.Tensor | None = None
    residx_atom14_to_atom37: torch.Tensor | None = None
    residx_atom37_to_atom14: torch.Tensor | None = None
    atom37_atom_exists: torch.Tensor | None = None
    residue_index: torch.Tensor | None = None
    lddt_head: torch.Tensor | None = None
    plddt: torch.Tensor | None = None
    ptm_logits: torch.Tensor | None = None
    ptm: torch.Tensor | None = None
    aligned_confidence_probs: torch.Tensor | None = None
    predicted_aligned_error: torch.Tensor | None = None
    max_predicted_aligned_error: torch.Tensor | None = None
    mean_plddt: torch.Tensor | None = None
    chain_index: torch.Tensor | None = None
    recycles: torch.Tensor | None = None
    mlm_targets: torch.Tensor | None = None


def af2_to_esm_table(vocab_list: Sequence[str]) -> torch.Tensor:
    """[22] long: folding index + 1 (0 = padding) -> the stem's token index."""
    return torch.tensor(
        [vocab_list.index("<pad>")] + [vocab_list.index(r) for r in rc.restypes_with_x],
        dtype=torch.long,
    )


def mean_plddt(plddt: torch.Tensor, atom37_exists: torch.Tensor) -> torch.Tensor:
    """[B]: mean of `plddt` [B, L, 37] over existing atoms `atom37_exists` [B, L, 37]."""
    weights = atom37_exists.to(plddt.dtype)
    return (plddt * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1)


class EsmForProteinFolding(EsmPreTrainedModel):
    """ESMFold: structure, pLDDT, pTM and PAE from single sequences.

    Forward inputs are the reference's: `input_ids` [B, L] folding indices,
    `attention_mask` [B, L], `position_ids` [B, L] residue indices,
    `masking_pattern` [B, L] (1 = replace by the mask token), `num_recycles`.
    """

    config_class = EsmConfig
    base_model_prefix = "esm"
    # Derived from config.vocab_list; rebuilt when a checkpoint lacks it.
    _keys_to_ignore_on_load_missing = [r"^af2_to_esm$"]
    # Checkpoints converted by older `transformers` (esmfold_v1 among them) stored
    # this non-persistent buffer; it is recomputed, not loaded.
    _keys_to_ignore_on_load_unexpected = [r"^esm\.embeddings\.position_ids$"]

    def __init__(self, config: EsmConfig, stem_dtype: torch.dtype | None = None):
        super().__init__(config)
        if not config.is_folding_model or config.esmfold_config is None:
            raise ValueError("EsmForProteinFolding needs a config with is_folding_model = true")
        cfg = config.esmfold_config
        if cfg.use_esm_attn_map:
            raise ValueError(
                "esmfold_config.use_esm_attn_map = true is not supported "
                "(no published ESMFold checkpoint uses it)"
            )
        vocab = list(config.vocab_list)
        for token in ("<cls>", "<pad>", "<eos>", "<mask>", *rc.restypes_with_x):
            if token not in vocab:
                raise ValueError(f"vocab_list lacks {token!r}, which the folding model maps to")
        trunk_cfg = cfg.trunk
        c_s = trunk_cfg.sequence_state_dim
        c_z = trunk_cfg.pairwise_state_dim

        self.distogram_bins = DISTOGRAM_BINS
        self.esm = EsmModel(config, add_pooling_layer=False)
        # The stem is frozen in ESMFold; its features are detached below as well.
        self.esm.requires_grad_(False)
        if cfg.fp16_esm:
            self.esm.half()
        if stem_dtype is not None:
            # Built (on the meta device under `from_pretrained`) in the stem's own
            # precision, so that loading writes fp16 weights straight into fp16
            # parameters: no full fp32 copy of a 3B stem on the GPU on the way.
            self.esm.to(stem_dtype)
        self.esm_feats = config.hidden_size
        self.esm_layers = config.num_hidden_layers
        self.register_buffer("af2_to_esm", af2_to_esm_table(vocab))
        self.esm_s_combine = nn.Parameter(torch.zeros(self.esm_layers + 1))
        self.esm_s_mlp = nn.Sequential(
            nn.LayerNorm(self.esm_feats),
            nn.Linear(self.esm_feats, c_s),
            nn.ReLU(),
            nn.Linear(c_s, c_s),
        )
        # NOTE: the reference carries `esm_input_dropout` in its config but never
        # applies it; here it is dropout on the combined stem features, active
        # only in training (0.0 in esmfold_v1, so inference is unchanged).
        self.esm_input_dropout = nn.Dropout(cfg.esm_input_dropout)
        self.esm_dict_cls_idx = vocab.index("<cls>")
        self.esm_dict_mask_idx = vocab.index("<mask>")
        self.esm_dict_eos_idx = vocab.index("<eos>")
        self.esm_dict_padding_idx = vocab.index("<pad>")
        if cfg.embed_aa:
            self.embedding = nn.Embedding(N_TOKENS_EMBED, c_s, padding_idx=PAD_IDX)

        self.trunk = FoldingTrunk(trunk_cfg)

        self.distogram_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.ptm_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.lm_head = nn.Linear(c_s, N_TOKENS_EMBED)
        self.lddt_head = LddtHead(trunk_cfg.structure_module.sequence_dim, cfg.lddt_head_hid_dim)
        self.post_init()

    # -- weights ------------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The base init, plus the bare parameters it does not know: zeros, as built.

        Needed when loading leaves them out (strict=False): they are then created
        with empty storage and must not keep whatever memory they got.
        """
        super()._init_weights(module)
        if module is self:
            self.esm_s_combine.zero_()
        elif isinstance(module, InvariantPointAttention):
            module.head_weights.zero_()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild `af2_to_esm` from the config (called by weight initialisation)."""
        table = af2_to_esm_table(list(self.config.vocab_list))
        if self.af2_to_esm.is_meta:
            self.af2_to_esm = table
        else:
            self.af2_to_esm.copy_(table.to(self.af2_to_esm.device))

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Process the trunk's pair updates `chunk_size` rows at a time (None: all at once).

        Chunking bounds activation memory to O(L^2) for long chains at some speed cost.
        """
        self.trunk.set_chunk_size(chunk_size)

    def set_early_stop_tolerance(self, tolerance: float | None) -> None:
        """Opt-in early stop of recycling (Angstrom; None: every pass, as the reference).

        See `esmpipe.models.esmfold.trunk` for the convergence measure.
        """
        self.trunk.set_early_stop_tolerance(tolerance)

    # -- the stem -----------------------------------------------------------------

    def af2_idx_to_esm_idx(self, aa: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] folding indices -> the stem's token indices (padding where mask is 0)."""
        aa = (aa + 1).masked_fill(mask != 1, 0)
        return self.af2_to_esm.to(aa.device)[aa]

    def compute_language_model_representations(self, esmaa: torch.Tensor) -> torch.Tensor:
        """Hidden states of every stem layer: [B, L] tokens -> [B, L, n_layers + 1, C]."""
        b, n = esmaa.shape
        if self.config.esmfold_config.bypass_lm:
            return torch.zeros(
                b, n, self.esm_layers + 1, self.esm_feats, device=esmaa.device,
                dtype=self.esm_s_combine.dtype,
            )  # fmt: skip
        pad = self.esm_dict_padding_idx
        bos = esmaa.new_full((b, 1), self.esm_dict_cls_idx)
        tail = esmaa.new_full((b, 1), pad)
        tokens = torch.cat([bos, esmaa, tail], dim=1)
        # EOS goes right after each protein's last residue, i.e. at the first padding slot.
        rows = torch.arange(b, device=tokens.device)
        tokens[rows, (tokens != pad).sum(1)] = self.esm_dict_eos_idx
        out = self.esm(tokens, attention_mask=(tokens != pad).long(), output_hidden_states=True)
        # [B, L + 2, n_layers + 1, C] without BOS and the EOS/padding column.
        return torch.stack(out.hidden_states, dim=2)[:, 1:-1]

    def bert_mask(
        self, aa: torch.Tensor, esmaa: torch.Tensor, pattern: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replace positions where `pattern` is 1 by the mask token, in both vocabularies."""
        new_aa = aa.masked_fill(pattern == 1, MASK_IDX)
        target = aa.masked_fill(pattern != 1, 0)
        new_esmaa = esmaa.masked_fill(pattern == 1, self.esm_dict_mask_idx)
        return new_aa, new_esmaa, target

    # -- forward ------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        masking_pattern: torch.Tensor | None = None,
        num_recycles: int | None = None,
        output_hidden_states: bool | None = False,
    ) -> EsmForProteinFoldingOutput:
        """Fold a batch.

        Inputs:
            input_ids: [B, L] residue indices (ARNDCQEGHILKMFPSTWYV, 20 = unknown).
            attention_mask: [B, L], 1 for residues, 0 for padding.
            position_ids: [B, L] residue indices for the relative positions (default 0..L-1).
            masking_pattern: [B, L], 1 where residues are masked (training regulariser).
            num_recycles: None for `esmfold_config.trunk.max_recycles` trunk passes,
                otherwise `num_recycles + 1` passes (the reference's meaning).
            output_hidden_states: accepted for API compatibility and ignored, as in
                the reference.
        Output:
            `EsmForProteinFoldingOutput`.
        """
        cfg = self.config.esmfold_config
        aa = input_ids
        b, n = aa.shape
        device = aa.device
        if attention_mask is None:
            attention_mask = torch.ones_like(aa)
        if position_ids is None:
            position_ids = torch.arange(n, device=device).expand(b, n)
        position_ids = position_ids.long()

        esmaa = self.af2_idx_to_esm_idx(aa, attention_mask)
        mlm_targets = None
        masked_aa = aa
        if masking_pattern is not None:
            masked_aa, esmaa, mlm_targets = self.bert_mask(aa, esmaa, masking_pattern)

        # The stem may run in fp16; the trunk works in the precision of its own weights.
        esm_s = self.compute_language_model_representations(esmaa)
        esm_s = esm_s.to(self.esm_s_combine.dtype).detach()
        if cfg.esm_ablate_sequence:
            esm_s = esm_s * 0
        # [B, L, C]: softmax-weighted sum over the stem's layers.
        esm_s = torch.einsum("l,bnlc->bnc", self.esm_s_combine.softmax(0), esm_s)
        s_s_0 = self.esm_s_mlp(self.esm_input_dropout(esm_s))
        if cfg.embed_aa:
            s_s_0 = s_s_0 + self.embedding(masked_aa)
        s_z_0 = s_s_0.new_zeros(b, n, n, cfg.trunk.pairwise_state_dim)

        structure = self.trunk(
            s_s_0, s_z_0, aa, position_ids, attention_mask, num_recycles=num_recycles
        )
        out = {
            k: structure[k]
            for k in ("frames", "sidechain_frames", "unnormalized_angles", "angles",
                      "positions", "states", "s_s", "s_z", "recycles")  # fmt: skip
        }
        out["mlm_targets"] = mlm_targets
        out["distogram_logits"] = symmetric_distogram(self.distogram_head, out["s_z"])
        out["lm_logits"] = self.lm_head(out["s_s"])
        out["aatype"] = aa

        masks = make_atom14_masks(aa)
        residue_mask = attention_mask.unsqueeze(-1)
        out["atom14_atom_exists"] = masks["atom14_atom_exists"] * residue_mask
        out["residx_atom14_to_atom37"] = masks["residx_atom14_to_atom37"]
        out["residx_atom37_to_atom14"] = masks["residx_atom37_to_atom14"]
        out["atom37_atom_exists"] = masks["atom37_atom_exists"] * residue_mask
        out["residue_index"] = position_ids

        # [N_sm, B, L, 37, bins]
        # Confidence in fp32 whatever the trunk's precision: softmax expectations over
        # 50 or 64 bins and sums over L pairs (pTM) lose digits in fp16/bf16.
        lddt_logits = self.lddt_head(out["states"]).float()
        out["lddt_head"] = lddt_logits
        out["plddt"] = plddt_from_logits(lddt_logits[-1]) * residue_mask.to(lddt_logits.dtype)
        out["mean_plddt"] = mean_plddt(out["plddt"], out["atom37_atom_exists"])

        ptm_logits = F.linear(out["s_z"].float(), self.ptm_head.weight.float(),
                              self.ptm_head.bias.float())  # fmt: skip
        out["ptm_logits"] = ptm_logits
        out["ptm"] = predicted_tm(ptm_logits, attention_mask)
        out.update(predicted_aligned_error(ptm_logits, attention_mask))
        return EsmForProteinFoldingOutput(**out)

    # -- strings in ---------------------------------------------------------------

    @torch.no_grad()
    def infer(
        self,
        sequences: str | Sequence[str],
        residx: torch.Tensor | Sequence[torch.Tensor] | None = None,
        masking_pattern: torch.Tensor | None = None,
        num_recycles: int | None = None,
        residue_index_offset: int | None = 512,
        chain_linker: str | None = "G" * 25,
    ) -> EsmForProteinFoldingOutput:
        """Fold amino-acid strings (one protein each; chains of a complex joined by ":").

        The chains of a complex are joined by `chain_linker` (residues whose atoms
        are then masked out of `atom37_atom_exists`), and each chain's residue
        indices are shifted by `residue_index_offset` more than the previous
        chain's, as the reference does. Proteins of different lengths are padded
        into one batch. Adds `chain_index` [B, L] and recomputes `mean_plddt`
        without the linkers. See `encode_sequences` for how letters are read.
        """
        if isinstance(sequences, str):
            sequences = [sequences]
        aatype, mask, default_residx, linker_mask, chain_index = batch_encode_sequences(
            sequences, residue_index_offset, chain_linker
        )
        if residx is None:
            residx = default_residx
        elif not isinstance(residx, torch.Tensor):
            residx = _pad_stack([torch.as_tensor(r) for r in residx], 0)
        elif residx.dim() == 1:
            residx = residx.unsqueeze(0)
        if residx.shape != aatype.shape:
            raise ValueError(
                f"residx has shape {tuple(residx.shape)}, but the encoded sequences have "
                f"{tuple(aatype.shape)} (chain linkers included)"
            )
        device = self.device
        output = self.forward(
            aatype.to(device),
            attention_mask=mask.to(device),
            position_ids=residx.to(device),
            masking_pattern=None if masking_pattern is None else masking_pattern.to(device),
            num_recycles=num_recycles,
        )
        output.atom37_atom_exists = output.atom37_atom_exists * linker_mask.to(device).unsqueeze(-1)
        output.mean_plddt = mean_plddt(output.plddt, output.atom37_atom_exists)
        output.chain_index = chain_index.to(device)
        return output


def output_to_atom37(output: EsmForProteinFoldingOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Final atom coordinates in the atom37 layout, for writing PDB/mmCIF.

    Returns (positions [B, L, 37, 3] from the last structure-module block, zero
    where an atom does not exist; atom mask [B, L, 37], zero on padding and linkers).
    """
    batch = {
        "residx_atom37_to_atom14": output.residx_atom37_to_atom14,
        "atom37_atom_exists": output.atom37_atom_exists,
    }
    return atom14_to_atom37(output.positions[-1], batch), output.atom37_atom_exists


# -- sequence encoding --------------------------------------------------------------


def _pad_stack(tensors: Sequence[torch.Tensor], pad_value: float) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into [B, L_max], padding with `pad_value`."""
    length = max((t.shape[0] for t in tensors), default=0)
    out = tensors[0].new_full((len(tensors), length), pad_value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def encode_sequence(
    sequence: str,
    residue_index_offset: int | None = 512,
    chain_linker: str | None = "G" * 25,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One protein (chains joined by ":") -> (aatype, residx, linker_mask, chain_index), each [L].

    Letters are upper-cased first and any letter outside the 20 standard residues
    (B, Z, J, U, O, X) becomes 20 (unknown), as in the reference.
    NOTE: the reference (facebookresearch/esm) maps lowercase letters to unknown
    and `transformers` rejects them; here `a` reads as `A`, since lowercase in
    sequence files marks soft-masking, not another residue. Characters that are
    not letters (`*`, `-`, digits, spaces) raise a ValueError naming them.
    Linker positions get the previous chain's index, and residue indices jump by
    `residue_index_offset` at each chain (the linker counts with the chain before it).
    """
    linker = chain_linker or ""
    offset = residue_index_offset or 0
    chains = sequence.upper().split(":")
    for chain in chains:
        bad = sorted({ch for ch in chain if not ("A" <= ch <= "Z")})
        if bad:
            raise ValueError(
                f"sequence {sequence[:30]!r}{'...' if len(sequence) > 30 else ''} contains "
                f"characters that are not residue letters: {bad}; remove them (a final '*' "
                "from gene callers included) before folding"
            )
        if not chain:
            raise ValueError(f"sequence {sequence[:30]!r} has an empty chain between ':'")
    joined = linker.join(chains)
    aatype = torch.tensor(
        [rc.restype_order_with_x.get(ch, rc.unk_restype_index) for ch in joined], dtype=torch.long
    )
    residx = torch.arange(len(joined), dtype=torch.long)
    linker_mask = torch.ones(len(joined), dtype=torch.float32)
    chain_index = torch.empty(len(joined), dtype=torch.long)
    start = 0
    for i, chain in enumerate(chains):
        end = start + len(chain)
        chain_index[start:end] = i
        residx[start : end + len(linker)] += i * offset
        if i < len(chains) - 1:
            linker_mask[end : end + len(linker)] = 0
            chain_index[end : end + len(linker)] = i
        start = end + len(linker)
    return aatype, residx, linker_mask, chain_index


def batch_encode_sequences(
    sequences: Sequence[str],
    residue_index_offset: int | None = 512,
    chain_linker: str | None = "G" * 25,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode and pad: (aatype, mask, residx, linker_mask, chain_index), each [B, L_max].

    Padding is 0 in all but `chain_index`, where it is -1.
    """
    if len(sequences) == 0:
        raise ValueError("no sequences to fold")
    encoded = [encode_sequence(s, residue_index_offset, chain_linker) for s in sequences]
    aatype = _pad_stack([e[0] for e in encoded], 0)
    mask = _pad_stack([torch.ones_like(e[0]) for e in encoded], 0)
    residx = _pad_stack([e[1] for e in encoded], 0)
    linker_mask = _pad_stack([e[2] for e in encoded], 0)
    chain_index = _pad_stack([e[3] for e in encoded], -1)
    return aatype, mask, residx, linker_mask, chain_index
