"""Fixtures of the fault suite: the ledger's server, topologies, clusters, scenarios; and the
table of ledger counts written into docs/reliability.md when the session ends."""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, wait_topology_healthy
from ledger import Ledger, LedgerServer
from ledger_table import DOC, Row, write
from scenario import Report, Scenario, ScenarioFactory

from platform_tasks.devstack.topology import SentinelTopology

_REPORT = Report()
#: Test id -> the result cell of its row ("pass", "FAIL", "xfail: <reason>").
_RESULTS: dict[str, str] = {}


@pytest.fixture(scope="session")
def ledger_server(redis_server_binary: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = LedgerServer(redis_server_binary, tmp_path_factory.mktemp("ledger"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ledger(ledger_server: LedgerServer) -> Iterator[Ledger]:
    client = Ledger(ledger_server.url)
    client.clear()
    yield client
    client.close()


def start_topology(binary: Path, run_dir: Path) -> SentinelTopology:
    topology = SentinelTopology(
        run_dir,
        password=secrets.token_urlsafe(12),
        sentinel_password=secrets.token_urlsafe(12),
        binary=binary,
    )
    topology.start()
    return topology


@pytest.fixture(scope="module")
def topology(redis_server_binary: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """One topology for the scenarios of a module that leave it whole."""
    started = start_topology(redis_server_binary, tmp_path_factory.mktemp("topology"))
    yield started
    started.stop()


@pytest.fixture
def fresh_topology(redis_server_binary: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A topology of its own, for a scenario that kills or partitions its nodes."""
    started = start_topology(redis_server_binary, tmp_path_factory.mktemp("fresh-topology"))
    yield started
    started.stop()


def _cluster(topology: SentinelTopology, ledger: Ledger, run_dir: Path) -> Iterator[Cluster]:
    wait_topology_healthy(topology)
    with topology.client(topology.master_address()[1]) as master:
        # Queues, unacked messages and dead letters of an earlier scenario must not count.
        master.flushall()
    made = Cluster(topology, ledger, run_dir)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
def cluster(topology: SentinelTopology, ledger: Ledger, tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(topology, ledger, tmp_path)


@pytest.fixture
def fresh_cluster(fresh_topology: SentinelTopology, ledger: Ledger,
                  tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(fresh_topology, ledger, tmp_path)


@pytest.fixture
def scenario(request: pytest.FixtureRequest, ledger: Ledger) -> Iterator[ScenarioFactory]:
    """``scenario(name, cluster)``: a scenario run, recorded in the session's table."""
    made: list[Scenario] = []

    def start(name: str, on: Cluster) -> Scenario:
        run = Scenario(name, on, ledger, _REPORT, request.node.nodeid)
        made.append(run)
        return run

    yield start
    for run in made:
        run.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[
        None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    reason = getattr(report, "wasxfail", None)
    if reason is not None:
        _RESULTS[item.nodeid] = (f"xfail: {reason}" if report.skipped
                                 else "pass (still marked xfail)")
    else:
        _RESULTS[item.nodeid] = "pass" if report.passed else "FAIL"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the counts of every scenario that ran into docs/reliability.md."""
    rows = [Row.of(counts, _RESULTS.get(test_id, "not finished"))
            for test_id, counts in _REPORT.counts.items()]
    if not rows:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        write(rows)
    except (OSError, ValueError) as error:
        # test_ledger_table fails on a document without its markers; here only a warning,
        # so the scenarios' own outcomes stay what the run reports.
        if reporter is not None:
            reporter.write_line(f"ledger table not written: {error}", red=True)
        return
    if reporter is not None:
        reporter.write_line(f"ledger table: {len(rows)} scenario(s) written to {DOC}")
