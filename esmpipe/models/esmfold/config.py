"""Configuration of the ESMFold head: a dataclass tree mirroring `esmfold_config` in config.json.

`EsmFoldConfig.from_dict` reads the nested dict that `transformers` writes
(`{"trunk": {"structure_module": {...}, ...}, ...}`) and `to_dict` writes it back,
so a config saved by either side is read by the other. Unknown keys are kept and
written back unchanged, because published configs carry bookkeeping keys we do
not use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value!r}")


def _split_known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    out.update(obj.extra)
    return out


@dataclass
class StructureModuleConfig:
    """The structure module (AlphaFold2 supplement, Algorithm 20)."""

    sequence_dim: int = 384
    pairwise_dim: int = 128
    ipa_dim: int = 16
    resnet_dim: int = 128
    num_heads_ipa: int = 12
    num_qk_points: int = 4
    num_v_points: int = 8
    dropout_rate: float = 0.1
    num_blocks: int = 8
    num_transition_layers: int = 1
    num_resnet_blocks: int = 2
    num_angles: int = 7
    trans_scale_factor: float = 10
    epsilon: float = 1e-8
    inf: float = 1e5
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_positive(
            "esmfold_config.trunk.structure_module",
            sequence_dim=self.sequence_dim,
            pairwise_dim=self.pairwise_dim,
            ipa_dim=self.ipa_dim,
            resnet_dim=self.resnet_dim,
            num_heads_ipa=self.num_heads_ipa,
            num_qk_points=self.num_qk_points,
            num_v_points=self.num_v_points,
            num_blocks=self.num_blocks,
            num_transition_layers=self.num_transition_layers,
            num_resnet_blocks=self.num_resnet_blocks,
            num_angles=self.num_angles,
        )
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ValueError(
                "esmfold_config.trunk.structure_module.dropout_rate must be in [0, 1], "
                f"got {self.dropout_rate!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructureModuleConfig:
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass
class TrunkConfig:
    """The folding trunk: `num_blocks` triangular self-attention blocks plus recycling."""

    num_blocks: int = 48
    sequence_state_dim: int = 1024
    pairwise_state_dim: int = 128
    sequence_head_width: int = 32
    pairwise_head_width: int = 32
    position_bins: int = 32
    dropout: float = 0.0
    layer_drop: float = 0.0
    cpu_grad_checkpoint: bool = False
    max_recycles: int = 4
    chunk_size: int | None = 128
    structure_module: StructureModuleConfig = field(default_factory=StructureModuleConfig)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        owner = "esmfold_config.trunk"
        _check_positive(
            owner,
            num_blocks=self.num_blocks,
            sequence_state_dim=self.sequence_state_dim,
            pairwise_state_dim=self.pairwise_state_dim,
            sequence_head_width=self.sequence_head_width,
            pairwise_head_width=self.pairwise_head_width,
            position_bins=self.position_bins,
        )
        if isinstance(self.structure_module, dict):
            self.structure_module = StructureModuleConfig.from_dict(self.structure_module)
        if self.sequence_state_dim % self.sequence_head_width:
            raise ValueError(
                f"{owner}.sequence_state_dim ({self.sequence_state_dim}) must be a multiple of "
                f"{owner}.sequence_head_width ({self.sequence_head_width})"
            )
        if self.pairwise_state_dim % self.pairwise_head_width:
            raise ValueError(
                f"{owner}.pairwise_state_dim ({self.pairwise_state_dim}) must be a multiple of "
                f"{owner}.pairwise_head_width ({self.pairwise_head_width})"
            )
        if self.pairwise_state_dim % 2:
            raise ValueError(
                f"{owner}.pairwise_state_dim must be even, got {self.pairwise_state_dim}"
            )
        if not 0.0 <= self.dropout <= 0.4:
            raise ValueError(f"{owner}.dropout must be in [0, 0.4], got {self.dropout!r}")
        if self.max_recycles < 0:
            raise ValueError(f"{owner}.max_recycles must be >= 0, got {self.max_recycles!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrunkConfig:
        known, extra = _split_known(cls, data)
        sm = known.get("structure_module")
        known["structure_module"] = (
            StructureModuleConfig() if sm is None else StructureModuleConfig.from_dict(dict(sm))
        )
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass
class EsmFoldConfig:
    """Top of the folding head's configuration (`config.esmfold_config`)."""

    esm_type: str | None = None
    fp16_esm: bool = True
    use_esm_attn_map: bool = False
    esm_ablate_pairwise: bool = False
    esm_ablate_sequence: bool = False
    esm_input_dropout: float = 0.0
    embed_aa: bool = True
    bypass_lm: bool = False
    lddt_head_hid_dim: int = 128
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.trunk, dict):
            self.trunk = TrunkConfig.from_dict(self.trunk)
        _check_positive("esmfold_config", lddt_head_hid_dim=self.lddt_head_hid_dim)
        if not 0.0 <= self.esm_input_dropout <= 1.0:
            raise ValueError(
                "esmfold_config.esm_input_dropout must be in [0, 1], "
                f"got {self.esm_input_dropout!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EsmFoldConfig:
        if data is None:
            return cls()
        known, extra = _split_known(cls, data)
        trunk = known.get("trunk")
        known["trunk"] = TrunkConfig() if trunk is None else TrunkConfig.from_dict(dict(trunk))
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)
