"""``bench/compare.py --smoke`` runs every scenario for every system, end to end.

It checks that the harness works (servers start, every system's workers run every scenario,
results are written), not the timings: the smoke sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "bench" / "compare.py"
SYSTEMS = ("platform", "seed-celery", "dramatiq", "rq")
SCENARIOS = ("drain", "mix", "enqueue", "latency", "scaling", "depth", "memory", "failover")
#: Scenarios measured for the platform only.
PLATFORM_ONLY = {"failover"}
#: Metrics a system may report as not applicable: the seed tutorial's Celery has no bulk API.
NOT_APPLICABLE = {("seed-celery", "enqueue", "bulk_per_s"),
                  ("seed-celery", "enqueue", "bulk_over_single")}


def _expected(system: str, scenario: str) -> bool:
    return scenario not in PLATFORM_ONLY or system == "platform"


@pytest.mark.timeout(120)
def test_smoke_run_produces_a_result_for_every_system_and_scenario(
    redis_server_binary: Path, tmp_path: Path
) -> None:
    # Given the harness in smoke mode, writing JSON and a plot
    results_path, plot_path = tmp_path / "results.json", tmp_path / "compare.png"

    # When it runs
    run = subprocess.run(
        [sys.executable, str(COMPARE), "--smoke", "--json", str(results_path),
         "--plot", str(plot_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
    )

    # Then it succeeded, and every system has a number for every scenario that applies to it
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    document = json.loads(results_path.read_text())
    assert document["settings"]["smoke"] is True
    for scenario in SCENARIOS:
        systems = document["scenarios"][scenario]["systems"]
        for system in SYSTEMS:
            if not _expected(system, scenario):
                assert system not in systems, f"{scenario} is platform-only, got {system}"
                continue
            metrics = systems[system]
            assert metrics, f"{system} produced nothing for {scenario}"
            for metric, summary in metrics.items():
                if (system, scenario, metric) in NOT_APPLICABLE:
                    assert summary is None, f"{system} {scenario} {metric}: expected n/a"
                    continue
                assert summary is not None, f"{system} {scenario} {metric}: no value"
                assert math.isfinite(summary["median"]), f"{system} {scenario} {metric}"
    # And the ratios are there for every baseline, and the plot was drawn
    ratios = document["scenarios"]["drain"]["ratios_platform_over"]["tasks_per_s"]
    assert set(ratios) == set(SYSTEMS) - {"platform"}
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(90)
def test_the_platform_on_a_single_redis_runs_every_scenario_but_failover(
    redis_server_binary: Path, tmp_path: Path
) -> None:
    # Given the harness asked for the platform on one plain redis-server only
    results_path = tmp_path / "results.json"

    # When it runs in smoke mode
    run = subprocess.run(
        [sys.executable, str(COMPARE), "--smoke", "--system", "platform-single-redis",
         "--json", str(results_path)],
        cwd=REPO, capture_output=True, text=True, timeout=80, check=False,
    )

    # Then every scenario but the Sentinel failover has its numbers
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    document = json.loads(results_path.read_text())
    assert set(document["scenarios"]) == set(SCENARIOS) - PLATFORM_ONLY
    for scenario, found in document["scenarios"].items():
        metrics = found["systems"]["platform-single-redis"]
        assert metrics, f"nothing for {scenario}"
        for metric, summary in metrics.items():
            assert summary is not None, f"{scenario} {metric}: no value"
            assert math.isfinite(summary["median"]), f"{scenario} {metric}"
