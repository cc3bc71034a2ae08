"""Beat waits out a master that refuses writes at start-up instead of crash-looping.

On a fresh install every pod starts at once, and until a replica has synced the master
answers writes with NOREPLICAS (``min-replicas-to-write``); redbeat writes its schedule
entries at start-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from platform_tasks import keys
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import beat_argv
from platform_tasks.devstack.topology import SentinelTopology

pytestmark = pytest.mark.integration


def test_beat_starts_once_the_master_accepts_writes(
    sentinel_topology: SentinelTopology, tmp_path: Path
) -> None:
    _host, port = sentinel_topology.master_address()
    master = sentinel_topology.client(port)
    master.delete(keys.BEAT_LAST_TICK)
    # More replicas required than exist: every write is refused with NOREPLICAS.
    master.config_set("min-replicas-to-write", 3)
    env = {**inherited_env(), **sentinel_topology.settings_env(), "PYTHONUNBUFFERED": "1"}
    beat = ManagedProcess("beat", beat_argv(), env, tmp_path / "beat.log")
    beat.start()
    try:
        time.sleep(4)
        assert beat.alive, (tmp_path / "beat.log").read_text()
        assert master.get(keys.BEAT_LAST_TICK) is None

        master.config_set("min-replicas-to-write", 1)
        deadline = time.monotonic() + 60
        while master.get(keys.BEAT_LAST_TICK) is None:
            assert beat.alive, (tmp_path / "beat.log").read_text()
            assert time.monotonic() < deadline, "beat never ticked"
            time.sleep(0.5)
    finally:
        master.config_set("min-replicas-to-write", 1)
        beat.stop(15)
        master.close()


def inherited_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if not key.startswith("PLATFORM_TASKS_")}
