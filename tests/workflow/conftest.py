"""Fixtures of the workflow tests: the environment and the demo run (once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .runner import demo_run as _demo_run
from .runner import esmpipe_env


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return esmpipe_env(tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, demo_env) -> Path:
    return _demo_run(tmp_path_factory, demo_env)
