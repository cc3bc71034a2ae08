"""The committed Grafana dashboards: generated from the code, queries only of our own series,
every panel says where its series come from, and the end-to-end test sees every query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from platform_tasks.observability import catalog, dashboards
from platform_tasks.observability.catalog import Source
from platform_tasks.queues import QUEUE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy/helm/platform-tasks/dashboards"

EXPOSED = {name: spec for spec in catalog.METRICS for name in spec.exposed_names}
#: PromQL functions, aggregations and keywords the dashboards may use; anything else that
#: looks like a name in an expression must be one of our series.
PROMQL_WORDS = {
    "sum", "max", "min", "count", "avg", "rate", "increase", "changes", "histogram_quantile",
    "time", "vector", "clamp_min", "by", "without", "on", "ignoring", "or", "and", "unless",
    "bool", "offset",
}
#: What a panel's description must say for each process serving its series.
SOURCE_WORDS = {
    Source.WORKER: "worker's /metrics",
    Source.MONITOR: "`platform-tasks monitor`",
}
#: Counters that only get a series once the event they count has happened.
EVENT_COUNTERS = {
    catalog.TASK_FAILURES, catalog.TASK_RETRIES, catalog.DEAD_LETTERS, catalog.TASKS_REJECTED,
    catalog.TASKS_REVOKED, catalog.MONITOR_POLL_ERRORS, catalog.PAYMENTS_DEDUPLICATED,
}


def committed() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def query_panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in model["panels"]:
        assert "panels" not in panel or not panel["panels"], "no collapsed rows: keep it flat"
        if panel["type"] not in {"row", "text"}:
            yield panel


def every_target() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for uid, model in committed().items():
        for panel in query_panels(model):
            for target in panel["targets"]:
                yield uid, panel, target


def names_in(expr: str) -> list[str]:
    """Every word of ``expr`` outside label matchers, ranges and grouping clauses."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", stripped)
    return re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped)


def metrics_of(expr: str) -> set[catalog.MetricSpec]:
    return {EXPOSED[name] for name in names_in(expr) if name in EXPOSED}


# -- generated and committed --------------------------------------------------------------


def test_committed_dashboards_and_doc_match_the_code() -> None:
    assert dashboards.drifted(ROOT) == [], (
        "dashboards drifted from the code: run "
        ".venv/bin/python -m platform_tasks.observability.dashboards --write"
    )


def test_a_hand_edited_dashboard_is_detected(tmp_path: Path) -> None:
    for relative in dashboards.generated_files(ROOT):
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, target)
    edited = tmp_path / dashboards.DASHBOARD_DIR / f"{dashboards.OVERVIEW_UID}.json"
    edited.write_text(edited.read_text().replace('"refresh": "30s"', '"refresh": "5s"'))

    assert dashboards.drifted(tmp_path) == [edited.relative_to(tmp_path)]


def test_check_mode_exits_1_on_drift_and_write_mode_repairs_it(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / dashboards.DOC, tmp_path / dashboards.DOC)

    assert dashboards.main(["--root", str(tmp_path)]) == 1
    assert dashboards.main(["--root", str(tmp_path), "--write"]) == 0
    assert dashboards.main(["--root", str(tmp_path)]) == 0
    written = (tmp_path / dashboards.DASHBOARD_DIR / f"{dashboards.QUEUE_UID}.json").read_text()
    assert written.endswith("}\n")
    assert written == (DASHBOARD_DIR / f"{dashboards.QUEUE_UID}.json").read_text()


# -- the dashboards themselves -------------------------------------------------------------


def test_uids_are_stable_unique_and_name_their_files() -> None:
    models = committed()

    assert set(models) == {"platform-tasks-overview", "platform-tasks-queue"}
    for stem, model in models.items():
        assert model["uid"] == stem
        assert model["id"] is None, "a provisioned dashboard must not carry a database id"
        assert "platform-tasks" in model["tags"]
        assert model["schemaVersion"] >= 39
    assert len({model["title"] for model in models.values()}) == len(models)


def test_every_dashboard_has_a_prometheus_datasource_variable() -> None:
    for uid, model in committed().items():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", uid
        assert variables["datasource"]["query"] == "prometheus", uid


def test_every_selector_filters_on_the_namespace_variable_whose_all_matches_no_label() -> None:
    for uid, model in committed().items():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        namespace = variables["namespace"]
        assert (namespace["includeAll"], namespace["allValue"]) == (True, ".*"), uid
    for query in dashboards.panel_queries():
        for token in re.findall(r"\bplatform_tasks_\w+(\{[^}]*\})?", query.expr):
            assert 'namespace=~"$namespace"' in token, (query.panel_title, query.expr)


def test_the_drilldown_picks_its_queue_from_the_monitors_ready_metric() -> None:
    variables = {v["name"]: v for v in committed()["platform-tasks-queue"]["templating"]["list"]}

    queue = variables["queue"]
    assert queue["type"] == "query"
    assert queue["query"]["query"] == (
        f'label_values({catalog.QUEUE_READY.name}{{namespace=~"$namespace"}}, queue)'
    )
    assert queue["datasource"]["uid"] == "${datasource}"
    assert not queue["multi"]
    assert not queue["includeAll"]


def test_every_target_has_a_ref_id_and_the_datasource_variable() -> None:
    for uid, model in committed().items():
        for panel in query_panels(model):
            where = f"{uid} / {panel['title']}"
            assert panel["targets"], where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert all(ref_ids), where
            assert len(set(ref_ids)) == len(ref_ids), where
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    for uid, model in committed().items():
        panels = model["panels"]
        assert len({panel["id"] for panel in panels}) == len(panels), uid
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{uid} / {panel['title']}"
            covered = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not covered & cells, f"{uid} / {panel['title']} overlaps another panel"
            cells |= covered


def test_every_query_reads_only_series_from_the_catalog() -> None:
    for uid, panel, target in every_target():
        names = names_in(target["expr"])
        unknown = [name for name in names if name not in EXPOSED and name not in PROMQL_WORDS]
        assert not unknown, f"{uid} / {panel['title']}: {unknown} are not catalog series"
        assert any(name in EXPOSED for name in names), f"{uid} / {panel['title']}"


def test_every_panel_description_names_the_process_serving_its_series() -> None:
    for uid, panel, target in every_target():
        for spec in metrics_of(target["expr"]):
            assert SOURCE_WORDS[spec.source] in panel["description"], (
                f"{uid} / {panel['title']} reads {spec.name} but does not say it comes from "
                f"{spec.source.value}"
            )


def test_the_overview_says_celery_exporter_series_are_for_the_mixin() -> None:
    overview = committed()["platform-tasks-overview"]
    intro = next(panel for panel in overview["panels"] if panel["type"] == "text")

    for text in (overview["description"], intro["options"]["content"]):
        assert "celery-exporter" in text
        assert "celery-mixin" in text


def test_rates_use_grafanas_rate_interval() -> None:
    for uid, panel, target in every_target():
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", target["expr"]):
            assert window == "$__rate_interval", f"{uid} / {panel['title']}"


def test_units_fit_what_the_panel_plots() -> None:
    for uid, model in committed().items():
        for panel in query_panels(model):
            unit = panel["fieldConfig"]["defaults"]["unit"]
            exprs = [target["expr"] for target in panel["targets"]]
            where = f"{uid} / {panel['title']}: {unit}"
            if all(expr.startswith("histogram_quantile(") for expr in exprs):
                assert unit == "s", where
            elif all("rate(" in expr and " / " not in expr for expr in exprs):
                assert unit == "ops", where
            else:
                assert unit in {"s", "short", "percentunit"}, where


def test_every_drilldown_query_filters_on_the_queue_variable() -> None:
    for panel in query_panels(committed()["platform-tasks-queue"]):
        for target in panel["targets"]:
            selectors = re.findall(r"\b(platform_tasks_\w+)(\{[^}]*\})?", target["expr"])
            assert selectors, panel["title"]
            for name, matchers in selectors:
                assert re.search(r'queue=~?"\$queue"', matchers), (
                    f"{panel['title']}: {name} is not filtered on the queue variable"
                )


def test_every_catalog_metric_is_on_a_dashboard() -> None:
    shown = {spec for _uid, _panel, target in every_target() for spec in metrics_of(target["expr"])}

    assert set(catalog.METRICS) - shown == set()


# -- what the end-to-end test runs ---------------------------------------------------------


def test_panel_queries_cover_every_target_of_every_panel() -> None:
    in_json = {
        (uid, panel["title"], target["refId"], target["expr"])
        for uid, panel, target in every_target()
    }
    listed = [
        (query.dashboard_uid, query.panel_title, query.ref_id, query.expr)
        for query in dashboards.panel_queries()
    ]

    assert len(listed) == len(set(listed))
    assert set(listed) == in_json


def test_concrete_queries_have_no_grafana_variables_and_cover_every_queue() -> None:
    for query in dashboards.panel_queries(rate_interval="30s"):
        assert "$" not in query.concrete_expr, query
        if "$__rate_interval" in query.expr:
            assert "[30s]" in query.concrete_expr, query
        if "$queue" in query.expr:
            matcher = re.search(r'queue=~"([^"]*)"', query.concrete_expr)
            assert matcher is not None, query
            assert set(matcher.group(1).split("|")) == set(QUEUE_NAMES), query


def test_only_panels_counting_failure_events_may_be_empty() -> None:
    for query in dashboards.panel_queries():
        reads = metrics_of(query.expr)
        only_events = bool(reads) and reads <= EVENT_COUNTERS
        assert query.needs_failure == only_events, (
            f"{query.dashboard_uid} / {query.panel_title}: needs_failure={query.needs_failure}"
        )


def test_failure_only_panels_say_so() -> None:
    flagged = {(q.dashboard_uid, q.panel_title) for q in dashboards.panel_queries()
               if q.needs_failure}
    for uid, model in committed().items():
        for panel in query_panels(model):
            says_empty = "Empty until" in panel["description"]
            assert says_empty == ((uid, panel["title"]) in flagged), f"{uid} / {panel['title']}"


def test_every_concrete_query_is_valid_promql(promtool_binary: Path, tmp_path: Path) -> None:
    queries = dashboards.panel_queries()
    # promtool has no "check this expression" command; recording rules are parsed fully.
    groups = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{index}:check", "expr": query.concrete_expr}
        for index, query in enumerate(queries)
    ]}]}
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(groups))

    checked = subprocess.run([str(promtool_binary), "check", "rules", str(rules)],
                             capture_output=True, text=True, timeout=60)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout
