"""``bench/latency_floor.py --smoke`` runs: its servers start, every probe is popped, it stops.

The timings of a smoke run mean nothing; this checks the script, not the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_smoke_run_reports_the_floor(redis_server_binary: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "latency_floor.py"), "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=50, check=False,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"LPUSH -> BRPOP, 10 probes 20 ms apart, median of 1: "
        r"p50 [\d.]+  p95 [\d.]+  p99 [\d.]+ ms", summary), summary
