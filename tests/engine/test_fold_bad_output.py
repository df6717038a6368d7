"""Bad output and recycling: NaN -> non_finite with no structure, suspect_ptm flags,
opt-in early stop of recycling (off = every recycle = a direct infer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from esmpipe.engine.fold import (
    SUSPECT_PLDDT_MAX,
    SUSPECT_PTM_MIN,
    FoldingEngine,
    quality_flags,
)
from esmpipe.models import EsmForProteinFolding
from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.trunk import ca_change

SEQUENCES = ["MKVLLAGGW", "ACDEFGHIKLMNPQRSTVWY", "MKVAAAGLLE"]


@pytest.fixture
def model(tiny_esmfold: Path) -> EsmForProteinFolding:
    return EsmForProteinFolding.from_pretrained(tiny_esmfold, dtype=torch.float32).eval()


def _spoil(model, monkeypatch, field: str, which: str, value: float = float("nan")) -> None:
    """Make `infer` put `value` into `field` for the protein `which` of every batch."""
    real_infer = model.infer

    def infer(sequences, **kwargs):
        out = real_infer(sequences, **kwargs)
        if which in sequences:
            i = sequences.index(which)
            tensor = getattr(out, field).clone()
            if field == "positions":
                tensor[-1, i, 2, 1, 0] = value  # atom14 slot 1: the CA
            elif field == "ptm":
                tensor[i] = value
            else:
                tensor[i, 1] = value
            setattr(out, field, tensor)
        return out

    monkeypatch.setattr(model, "infer", infer)


@pytest.mark.parametrize("field", ["positions", "plddt", "predicted_aligned_error", "ptm"])
def test_injected_nan_gives_non_finite_and_no_structure(model, monkeypatch, field) -> None:
    _spoil(model, monkeypatch, field, SEQUENCES[1])
    results = FoldingEngine(model, max_tokens=10_000, num_recycles=1).fold(SEQUENCES)
    assert [r.status for r in results] == ["ok", "non_finite", "ok"]
    bad = results[1]
    assert bad.pdb is None and bad.plddt is None and bad.mean_plddt is None
    assert bad.ptm is None and bad.max_pae is None and bad.mean_pae is None
    assert bad.flags == [] and bad.recycles == 1
    for good in (results[0], results[2]):
        assert np.isfinite(good.plddt).all() and good.pdb is not None


def test_infinity_is_non_finite_too(model, monkeypatch) -> None:
    _spoil(model, monkeypatch, "positions", SEQUENCES[0], float("inf"))
    results = FoldingEngine(model, num_recycles=0).fold(SEQUENCES[:1])
    assert results[0].status == "non_finite"


def test_nan_on_padding_or_missing_atoms_is_ignored(model, monkeypatch) -> None:
    # Atom37 slots that do not exist for a residue (glycine has no CB) are not output.
    real_infer = model.infer

    def infer(sequences, **kwargs):
        out = real_infer(sequences, **kwargs)
        out.plddt = out.plddt.clone()
        out.plddt[..., rc.atom_order["CB"]] = torch.where(
            out.atom37_atom_exists[..., rc.atom_order["CB"]] > 0,
            out.plddt[..., rc.atom_order["CB"]], float("nan"))  # fmt: skip
        return out

    monkeypatch.setattr(model, "infer", infer)
    (result,) = FoldingEngine(model, num_recycles=0).fold(["GGGAG"])
    assert result.status == "ok"


def test_quality_flags_thresholds() -> None:
    assert quality_flags(SUSPECT_PTM_MIN, SUSPECT_PLDDT_MAX - 0.1) == ["suspect_ptm"]
    assert quality_flags(0.95, 20.0) == ["suspect_ptm"]
    assert quality_flags(SUSPECT_PTM_MIN - 0.01, 20.0) == []
    assert quality_flags(0.95, SUSPECT_PLDDT_MAX) == []
    assert quality_flags(0.3, 90.0) == []


def test_engine_flags_high_ptm_low_plddt(model, monkeypatch) -> None:
    real_infer = model.infer

    def infer(sequences, **kwargs):
        out = real_infer(sequences, **kwargs)
        out.ptm = torch.full_like(out.ptm, 0.9)
        out.plddt = torch.full_like(out.plddt, 0.3)  # 30 on the 0-100 scale
        return out

    monkeypatch.setattr(model, "infer", infer)
    results = FoldingEngine(model, num_recycles=0).fold(SEQUENCES[:2])
    assert all(r.status == "ok" and r.flags == ["suspect_ptm"] for r in results)


def test_ca_change_is_rigid_invariant_and_measures_distances() -> None:
    torch.manual_seed(0)
    ca = torch.randn(2, 6, 3) * 5
    mask = torch.ones(2, 6)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3))
    moved = ca @ rotation.T + torch.tensor([3.0, -1.0, 2.0])
    assert ca_change(moved, ca, mask) < 1e-4
    # Scaling by 1.1 changes every distance d by 0.1 d: RMS = 0.1 * RMS(d) over pairs.
    d = torch.cdist(ca, ca)
    expected = float((0.1 * d).pow(2).mean((1, 2)).sqrt().max())
    assert ca_change(ca * 1.1, ca, mask) == pytest.approx(expected, rel=1e-4)
    # Padding does not count: a wild padded residue changes nothing.
    mask[:, -1] = 0
    wild = ca.clone()
    wild[:, -1] += 100
    assert ca_change(wild, ca, mask) < 1e-4


def test_early_stop_off_runs_every_recycle_and_equals_infer(model) -> None:
    results = FoldingEngine(model, num_recycles=3).fold(SEQUENCES)
    for seq, result in zip(SEQUENCES, results, strict=True):
        with torch.no_grad():
            out = model.infer([seq], num_recycles=3)
        assert result.recycles == 3 and int(out.recycles) == 3
        ca = out.plddt[0, :, rc.atom_order["CA"]].numpy() * 100
        np.testing.assert_allclose(result.plddt, ca, atol=1e-4)
        assert result.ptm == pytest.approx(float(out.ptm[0]), abs=1e-5)


def _changes(model, seq: str, num_recycles: int) -> list[float]:
    """CA change after each recycle, measured by running 0, 1, 2, ... recycles."""
    with torch.no_grad():
        cas = [model.infer([seq], num_recycles=r).positions[-1][:, :, 1] for r in
               range(num_recycles + 1)]  # fmt: skip
    mask = torch.ones(1, len(seq))
    return [ca_change(b, a, mask) for a, b in zip(cas, cas[1:], strict=False)]


def test_early_stop_on_stops_at_the_first_converged_recycle(model) -> None:
    seq = SEQUENCES[1]
    changes = _changes(model, seq, 4)
    assert len(set(changes)) == len(changes)  # a real sequence of changes
    # A tolerance just above the smallest of the first three changes stops at the first
    # change below it: recycles run = that index + 1 (the change is measured after the
    # pass), before the last pass (the fourth change is never looked at).
    tolerance = min(changes[:3]) * 1.0001
    first = next(i for i, c in enumerate(changes) if c < tolerance)
    (stopped,) = FoldingEngine(model, num_recycles=4, early_stop_tolerance=tolerance).fold([seq])
    assert stopped.recycles == first + 1 < 4
    # ... and gives exactly what a run of that many recycles gives.
    (short,) = FoldingEngine(model, num_recycles=first + 1).fold([seq])
    np.testing.assert_allclose(stopped.plddt, short.plddt, atol=1e-5)
    assert stopped.ptm == pytest.approx(short.ptm, abs=1e-6)
    # A tolerance of 0 never stops early.
    (full,) = FoldingEngine(model, num_recycles=4, early_stop_tolerance=0.0).fold([seq])
    assert full.recycles == 4


def test_early_stop_tolerance_is_validated(model) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        model.set_early_stop_tolerance(-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        FoldingEngine(model, early_stop_tolerance=-1.0)


def test_an_engine_without_early_stop_ignores_another_engines_tolerance(model) -> None:
    seq = SEQUENCES[1]
    early = FoldingEngine(model, num_recycles=3, early_stop_tolerance=1e6)  # stops at once
    plain = FoldingEngine(model, num_recycles=3)  # same model, built after `early`
    assert early.fold([seq])[0].recycles == 1
    assert plain.fold([seq])[0].recycles == 3
    assert early.fold([seq])[0].recycles == 1
