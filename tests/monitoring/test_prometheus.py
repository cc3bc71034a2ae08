"""Proof against a real Prometheus: the local stack under a mixed workload, scraped for real.

Given the whole platform (every queue's worker, beat, the monitor) and a Prometheus server
scraping the workers and the monitor with the chart's rule file loaded, when a workload with
successes, retries, failures, a rejected message, a revoked task and a deduplicated payment
has run, then every documented series exists with its documented labels, every dashboard
query returns data, and every rule loads and evaluates without error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from platform_tasks.devstack.prometheus import PrometheusServer
from platform_tasks.observability import catalog
from platform_tasks.observability.dashboards import panel_queries
from platform_tasks.producer import TaskProducer

if TYPE_CHECKING:
    from platform_tasks.devstack.stack import DevStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy/helm/platform-tasks/rules").glob("*.yaml"))
#: Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"__name__", "job", "instance"}
#: Series this workload cannot produce: a monitor poll error needs the broker to fail.
NOT_PRODUCED_BY_WORKLOAD = {catalog.MONITOR_POLL_ERRORS.name}


def run_workload(stack: DevStack) -> None:
    """Successes on every queue, plus each kind of trouble the dashboards show."""
    Image.new("RGB", (64, 48), "teal").save(stack.media_root / "photo.png")
    with TaskProducer(stack.settings()) as producer:
        ids = [producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                                args=[n, 1]) for n in range(8)]
        ids.append(producer.enqueue("platform_tasks.default.sum_numbers", queue="default",
                                    kwargs={"numbers": [1, 2, 3]}))
        ids += [
            producer.enqueue("platform_tasks.email.send_welcome_email", queue="email",
                             kwargs={"user_email": address})
            for address in ("ada@example.com", "tempfail-1@example.com",
                            "nobody@invalid.example.com")
        ]
        ids += [
            producer.enqueue("platform_tasks.payments.process_payment", queue="payments",
                             kwargs={"transaction_id": f"order-{n}", "amount": "12.50",
                                     "currency": "EUR", "idempotency_key": f"order-key-{n}"})
            for n in (1, 2, 3, 1)  # the gateway stub fails every 2nd call; order-1 twice
        ]
        ids.append(producer.enqueue("platform_tasks.media.make_thumbnail", queue="media",
                                    kwargs={"source": "photo.png", "sizes": [[16, 16]]}))
        # A message no worker knows: rejected and counted as a dead letter.
        producer.app.send_task("platform_tasks.default.no_such_task", queue="default")
        revoked = producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                                   args=[1, 1], countdown=3)
        producer.revoke(revoked)
        for task_id in ids:
            producer.wait(task_id, 120)
        # The revoked task is dropped when its countdown ends.
        time.sleep(4)


@pytest.fixture(scope="module")
def prometheus(
    redis_server_binary: Path, prometheus_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    from platform_tasks.devstack.stack import DevStack

    run_dir = tmp_path_factory.mktemp("observed")
    with DevStack(run_dir, beat=True, gateway_fail_every=2) as stack:
        stack.wait_for_workers(timeout=90)
        with PrometheusServer(
            run_dir / "prometheus", stack.metrics_urls, rule_files=RULE_FILES,
            binary=prometheus_binary,
        ) as server:
            server.wait_for_targets()
            run_workload(stack)
            # A few scrapes and rule evaluations after the last event.
            time.sleep(5)
            yield server


def series_labels(server: PrometheusServer, name: str) -> list[set[str]]:
    found: list[dict[str, str]] = server.api("series", **{"match[]": name})
    return [set(series) - TARGET_LABELS for series in found]


def test_the_docs_name_exactly_the_catalog() -> None:
    documented = set(re.findall(r"^\| `(platform_tasks_\w+)`", (ROOT / "docs/metrics.md")
                                .read_text(), re.MULTILINE))
    assert documented == {spec.name for spec in catalog.METRICS}


@pytest.mark.parametrize("spec", catalog.METRICS, ids=lambda spec: spec.name)
def test_every_documented_metric_exists_with_its_labels(
    prometheus: PrometheusServer, spec: catalog.MetricSpec
) -> None:
    if spec.name in NOT_PRODUCED_BY_WORKLOAD:
        # Present from the start at zero, one series per check.
        assert series_labels(prometheus, spec.name) == [set(spec.labels)] * 4
        return
    for exposed in spec.exposed_names:
        labels = series_labels(prometheus, exposed)
        assert labels, f"no {exposed} series"
        extra = {"le"} if exposed.endswith("_bucket") else set()
        assert all(found == set(spec.labels) | extra for found in labels), labels


def test_every_dashboard_query_returns_a_number(prometheus: PrometheusServer) -> None:
    empty: list[str] = []
    for query in panel_queries():
        values = [sample["value"][1] for sample in prometheus.query(query.concrete_expr)]
        # A series of NaN (a quantile over no observations) shows nothing either.
        if not [value for value in values if value != "NaN"]:
            empty.append(f"{query.dashboard_uid} / {query.panel_title} / {query.ref_id}: "
                         f"{query.concrete_expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def rules(server: PrometheusServer) -> list[dict[str, Any]]:
    return [rule for group in server.api("rules")["groups"] for rule in group["rules"]]


def test_every_rule_loads_and_evaluates_without_error(prometheus: PrometheusServer) -> None:
    assert RULE_FILES
    loaded = rules(prometheus)
    assert loaded
    deadline = time.monotonic() + 30
    while any(rule["health"] == "unknown" for rule in loaded) and time.monotonic() < deadline:
        time.sleep(1)
        loaded = rules(prometheus)
    broken = [(rule["name"], rule["health"], rule.get("lastError")) for rule in loaded
              if rule["health"] != "ok" or rule.get("lastError")]
    assert not broken
    for rule in loaded:
        prometheus.query(rule["query"])  # raises on an evaluation error
