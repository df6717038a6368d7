"""A results folder made by the demo workflow, once per test session.

The run is the one tests/workflow makes (`tests/workflow/runner.py` caches it per
session), so a whole-suite run pays for one demo only. Tests must not write into
it: commands get `--index-dir` / `--output` under their own tmp_path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "workflow" / "runner.py"


def _runner():
    """tests/workflow/runner.py as the module its own conftest imported (so the demo run
    it caches is shared), or loaded by path when that package name is not importable."""
    for name, module in list(sys.modules.items()):
        if name.endswith("runner") and getattr(module, "__file__", None) and \
                Path(module.__file__).resolve() == RUNNER:
            return module
    try:
        from workflow import runner  # the package name pytest gives tests/workflow

        if Path(runner.__file__).resolve() == RUNNER:
            return runner
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("esmpipe_tests_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def results_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _runner().esmpipe_env(tmp_path_factory.mktemp("results-env"))


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory: pytest.TempPathFactory, results_env) -> Path:
    """`results/` of the demo workflow (read-only for tests). For quick local iteration
    ESMPIPE_TEST_DEMO_DIR may name the working folder of a finished demo run."""
    if os.environ.get("ESMPIPE_TEST_DEMO_DIR"):
        return Path(os.environ["ESMPIPE_TEST_DEMO_DIR"]) / "results"
    return _runner().demo_run(tmp_path_factory, results_env) / "results"


@pytest.fixture
def res(demo_results, tmp_path):
    from esmpipe.results import Results

    with Results(demo_results, index_dir=tmp_path / "index") as results:
        yield results


def run_esmpipe(env, cwd, *args):
    return _runner().esmpipe(*args, env=env, cwd=cwd)
