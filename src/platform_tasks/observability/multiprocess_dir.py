"""Prepares prometheus-client's multiprocess directory for a worker, before the library loads.

prometheus-client decides at import time whether values live in memory or in per-process
files under ``PROMETHEUS_MULTIPROC_DIR``. Prefork pool children each count in their own
process, so a worker must point that variable at an empty directory before anything imports
``prometheus_client``; otherwise each child's counts would vanish with it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from platform_tasks.settings import Settings

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsSetupError(RuntimeError):
    """The multiprocess directory could not be prepared in time or in place."""


def prepare(settings: Settings) -> Path:
    """Create (or empty) the worker's metrics directory and export it; returns its path.

    Files left by an earlier run of the same pod would otherwise be merged into this run's
    counters, so the directory is emptied of ``*.db`` files first.
    """
    if "prometheus_client" in sys.modules and os.environ.get(ENV_VAR) is None:
        raise MetricsSetupError(
            "prometheus_client was imported before the multiprocess directory was set; "
            "call platform_tasks.observability.multiprocess_dir.prepare() first"
        )
    if settings.metrics_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="platform-tasks-metrics-"))
    else:
        directory = settings.metrics_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for leftover in directory.glob("*.db"):
                leftover.unlink()
        except OSError as error:
            raise MetricsSetupError(
                f"PLATFORM_TASKS_METRICS_DIR {str(directory)!r} is not a writable directory: "
                f"{error.strerror or error}"
            ) from None
    os.environ[ENV_VAR] = str(directory)
    return directory


def remove(directory: Path) -> None:
    """Delete a directory :func:`prepare` created under the temp dir (at worker exit)."""
    shutil.rmtree(directory, ignore_errors=True)
