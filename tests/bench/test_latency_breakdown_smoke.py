"""``bench/latency_breakdown.py --smoke`` runs: the worker's members are marked, every probe is
split into its parts, and it stops what it started.

The timings of a smoke run mean nothing; this checks the script and its marks, not the
machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTS = ("producer", "broker and wake-up", "reply read", "to kombu", "to task_received",
         "to task_prerun", "to task_started", "total")


@pytest.mark.timeout(120)
def test_smoke_run_splits_every_probe(redis_server_binary: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "latency_breakdown.py"), "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    # Every probe was split: a probe whose member marks were missing would be left out.
    assert lines[0] == "10 probes 20 ms apart, microseconds:", run.stdout
    for part in PARTS:
        row = next((line for line in lines if line.startswith(f"{part} ")), None)
        assert row is not None, f"no row for {part!r}:\n{run.stdout}"
        assert re.fullmatch(rf"{re.escape(part)}\s+(-?\d+\s+){{3}}-?\d+", row), row
    assert re.search(r"^probes with a garbage collection inside them: \d+ of 10$",
                     run.stdout, re.MULTILINE), run.stdout
