"""The environment of the workers the integration tests start themselves."""

from __future__ import annotations

import os
from pathlib import Path

from platform_tasks.devstack.topology import SentinelTopology

#: Where the test task modules (``--include``) live: on the workers' ``PYTHONPATH``.
TASKS_DIR = Path(__file__).resolve().parent


def worker_env(topology: SentinelTopology, **settings: str) -> dict[str, str]:
    """This process's environment without its ``PLATFORM_TASKS_*`` (a developer's own settings
    would point a worker elsewhere), plus the topology's and ``settings``
    (``visibility_timeout_seconds="6"`` is ``PLATFORM_TASKS_VISIBILITY_TIMEOUT_SECONDS``)."""
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("PLATFORM_TASKS_")}
    return {
        **base,
        **topology.settings_env(),
        **{f"PLATFORM_TASKS_{name.upper()}": value for name, value in settings.items()},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TASKS_DIR), base.get("PYTHONPATH")])),
    }
