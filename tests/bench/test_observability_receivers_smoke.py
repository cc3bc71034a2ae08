"""``bench/observability_receivers.py`` runs: every receiver set is timed and the split printed.

Tiny batches: the figures of this run mean nothing; this checks the script, not the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_a_short_run_reports_each_receiver_set_and_the_split() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "observability_receivers.py"),
         "--tasks-per-batch", "20", "--batches", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=50, check=False,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    for name in ("all", "no lines", "no metrics", "neither"):
        assert any(re.fullmatch(rf"{name}\s+[\d.]+", line) for line in lines), run.stdout
    assert re.fullmatch(r"lifecycle lines [+-][\d.]+ µs, metrics [+-][\d.]+ µs, both "
                        r"[+-][\d.]+ µs per task", lines[-1]), lines[-1]
