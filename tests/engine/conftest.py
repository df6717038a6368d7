"""Tiny random checkpoints for the engine tests (session-scoped, built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esmpipe.cli import main


@pytest.fixture(scope="session")
def tiny_esm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ESM-2-like checkpoint folder (`esmpipe init-model --preset tiny-esm2`)."""
    folder = tmp_path_factory.mktemp("tiny-esm2")
    assert main(["init-model", "--preset", "tiny-esm2", "--output", str(folder)]) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_esmfold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ESMFold-like checkpoint folder (`esmpipe init-model --preset tiny-esmfold`)."""
    folder = tmp_path_factory.mktemp("tiny-esmfold")
    assert main(["init-model", "--preset", "tiny-esmfold", "--output", str(folder)]) == 0
    return folder
