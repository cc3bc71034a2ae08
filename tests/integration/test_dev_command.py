"""`platform-tasks dev` (`make run`): the demo passes, Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but is not reaped yet is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_dev_runs_the_demo_and_stops_everything_on_ctrl_c(
    redis_server_binary: Path, tmp_path: Path
) -> None:
    log = tmp_path / "dev.out"
    with log.open("w") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "platform_tasks", "dev", "--run-dir", str(tmp_path / "run")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "press Ctrl-C to stop" not in log.read_text():
            assert dev.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "demo finished as expected" in text
        pids = [int(pid) for pid in re.findall(r" pid (\d+) ", text)]
        assert len(pids) == 3 + 3 + 4 + 1 + 1  # nodes, sentinels, workers, monitor, beat
        assert all(alive(pid) for pid in pids)
        assert (tmp_path / "run" / "env.sh").stat().st_mode & 0o777 == 0o600

        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
