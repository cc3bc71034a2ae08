"""The Prometheus rules: committed output matches the generator, promtool accepts and tests
them, and every alert has a runbook section and a test that shows it fire."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from platform_tasks.observability import alert_rules, catalog
from platform_tasks.queues import QUEUES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / alert_rules.RULES_PATH
RUNBOOKS = ROOT / alert_rules.RUNBOOKS_PATH
PROMTOOL_TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yaml"))


def _committed_alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def _unit_tests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, yaml.safe_load(path.read_text())) for path in PROMTOOL_TESTS]


# -- generated file ------------------------------------------------------------------------


def test_committed_files_match_the_generator() -> None:
    assert alert_rules.drifted(ROOT) == [], (
        "the rule file or the runbooks' tables drifted from the generator: run "
        ".venv/bin/python -m platform_tasks.observability.alert_rules --write"
    )


def test_the_check_command_reports_drift_and_write_fixes_it(tmp_path: Path) -> None:
    for relative in (alert_rules.RULES_PATH, alert_rules.RUNBOOKS_PATH):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text((ROOT / relative).read_text())
    rules = tmp_path / alert_rules.RULES_PATH
    rules.write_text(rules.read_text().replace("> 0.1", "> 0.2"))
    runbooks = tmp_path / alert_rules.RUNBOOKS_PATH
    runbooks.write_text(runbooks.read_text().replace("| `payments` | 1m |", "| `payments` | 2m |"))
    assert alert_rules.drifted(tmp_path) == [alert_rules.RULES_PATH, alert_rules.RUNBOOKS_PATH]
    assert alert_rules.main(["--root", str(tmp_path)]) == 1
    assert alert_rules.main(["--root", str(tmp_path), "--write"]) == 0
    assert alert_rules.main(["--root", str(tmp_path)]) == 0


def test_expressions_lists_every_rule_in_the_file() -> None:
    data = yaml.safe_load(RULES.read_text())
    in_file = [rule["expr"] for group in data["groups"] for rule in group["rules"]]
    assert [e.expr for e in alert_rules.expressions()] == in_file
    assert alert_rules.alert_names() == list(dict.fromkeys(a["alert"] for a in _committed_alerts()))


# -- promtool ------------------------------------------------------------------------------


def test_promtool_accepts_the_rule_file(promtool_binary: Path) -> None:
    result = subprocess.run(
        [str(promtool_binary), "check", "rules", str(RULES)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(promtool_binary: Path, test_file: Path) -> None:
    result = subprocess.run(
        [str(promtool_binary), "test", "rules", str(test_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_evaluate_groups_in_file_order() -> None:
    # Without group_eval_order promtool picks a random order, and alerts that read a
    # recording rule would pass or fail by chance.
    order = [group.name for group in alert_rules.groups()]
    for path, data in _unit_tests():
        assert data.get("group_eval_order") == order, path.name


# -- every alert: labels, annotations, runbook, test ---------------------------------------


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in _committed_alerts():
        name = rule["alert"]
        assert re.fullmatch(r"PlatformTasks[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert "{{" not in annotations["summary"], f"{name}: the summary must be static"
        assert annotations["description"], name
        assert annotations["runbook_url"] == (
            f"{alert_rules.RUNBOOK_BASE_URL}#{name.lower()}"
        ), name
        assert rule["for"], f"{name} has no 'for': a single bad scrape would page"


def test_descriptions_are_templated_except_for_absent_alerts() -> None:
    # absent() returns one series with no labels and the value 1: nothing to template.
    for rule in _committed_alerts():
        if not rule["expr"].startswith("absent("):
            assert "{{" in rule["annotations"]["description"], rule["alert"]


def _headings(markdown: str) -> dict[str, str]:
    found = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*\S)", line)):
            found[alert_rules.runbook_anchor(match.group(1))] = match.group(1)
    return found


def test_every_runbook_url_points_at_a_runbook_section() -> None:
    anchors = _headings(RUNBOOKS.read_text())
    for rule in _committed_alerts():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in runbooks.md"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    headings = _headings(RUNBOOKS.read_text()).values()
    sections = [heading for heading in headings if heading.startswith("PlatformTasks")]
    assert sorted(sections) == sorted(alert_rules.alert_names())


def test_runbook_sections_say_what_it_means_how_to_confirm_and_what_to_do() -> None:
    text = RUNBOOKS.read_text()
    for name in alert_rules.alert_names():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("Meaning", "Confirm", "Act"):
            assert f"**{part}.**" in section, f"{name}: no **{part}.** paragraph"
        assert "```" in section, f"{name}: no command or query to run"


def test_anchors_follow_github_slugs() -> None:
    assert alert_rules.runbook_anchor("PlatformTasksBrokerDown") == "platformtasksbrokerdown"
    assert alert_rules.runbook_anchor("Before you start: names") == "before-you-start-names"


def test_every_alert_and_severity_is_shown_firing_and_not_firing() -> None:
    firing: dict[str, set[str]] = defaultdict(set)
    quiet: set[str] = set()
    for path, data in _unit_tests():
        for group in data["tests"]:
            for check in group.get("alert_rule_test", []):
                name = check["alertname"]
                expected = check.get("exp_alerts") or []
                if not expected:
                    quiet.add(name)
                for alert in expected:
                    labels, annotations = alert["exp_labels"], alert["exp_annotations"]
                    assert "severity" in labels, f"{path.name}: {name} without severity"
                    assert set(annotations) == {"summary", "description", "runbook_url"}, (
                        f"{path.name}: {name} must check every annotation"
                    )
                    firing[name].add(labels["severity"])
    wanted: dict[str, set[str]] = defaultdict(set)
    for rule in _committed_alerts():
        wanted[rule["alert"]].add(rule["labels"]["severity"])
    for name, severities in wanted.items():
        assert severities <= firing[name], f"{name}: no promtool test shows it firing"
        assert name in quiet, f"{name}: no promtool test shows it not firing (before its for:)"


def test_every_recording_rule_has_a_promtool_test() -> None:
    tested = {
        check["expr"].split("{")[0].strip()
        for _path, data in _unit_tests()
        for group in data["tests"]
        for check in group.get("promql_expr_test", [])
    }
    assert set(alert_rules.recording_names()) <= tested


# -- every metric an expression reads is in the catalog -------------------------------------

_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_OFFSETS = re.compile(r"\boffset\s+\d+[smhdwy]")
_NUMBERS = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w:])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (not its functions, labels or keywords)."""
    text = _STRINGS.sub('""', expr)
    for pattern in (_MATCHERS, _LABEL_LISTS, _RANGES, _OFFSETS, _NUMBERS):
        text = pattern.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        followed_by_call = text[match.end():].lstrip().startswith("(")
        if not followed_by_call and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_metric_names_reads_selectors_only() -> None:
    expr = (
        'sum by (namespace, queue) (rate(a_total{queue="x", le="+Inf"}[5m])) > 0.1\n'
        "and on (namespace) ns:b:rate5m offset 1h or time() - c > 120 unless absent(d)"
    )
    assert metric_names(expr) == {"a_total", "ns:b:rate5m", "c", "d"}


def test_every_metric_in_an_expression_is_in_the_catalog() -> None:
    exposed = {name for spec in catalog.METRICS for name in spec.exposed_names}
    recorded = set(alert_rules.recording_names())
    for rule in alert_rules.expressions():
        for name in metric_names(rule.expr):
            known = recorded if ":" in name else exposed
            assert name in known, f"{rule.name} reads {name}, which nothing defines"


def test_every_catalog_metric_from_the_monitor_feeds_some_rule() -> None:
    # The monitor exists for the queue, beat and broker view; a series of it that no rule
    # reads is one the alerts cannot see.
    used = {name for rule in alert_rules.expressions() for name in metric_names(rule.expr)}
    unused = {
        spec.name
        for spec in catalog.by_source(catalog.Source.MONITOR)
        if not used & set(spec.exposed_names)
    }
    # Read by the runbooks and dashboards; no alert needs their value.
    assert unused <= {catalog.SENTINEL_MASTER.name, catalog.MONITOR_POLL_ERRORS.name}


# -- the per-queue backlog limits ----------------------------------------------------------


def test_no_queue_warns_before_a_message_could_wait_one_full_run() -> None:
    # With every slot busy a healthy queue's next message can wait one hard time limit.
    for queue, limit in alert_rules.BACKLOG_AGE_LIMITS.items():
        assert limit.warning_seconds >= QUEUES[queue].time_limit, queue


def test_payments_is_the_tightest_queue_and_media_the_most_patient() -> None:
    warning = {str(q): limit.warning_seconds for q, limit in alert_rules.BACKLOG_AGE_LIMITS.items()}
    assert min(warning, key=warning.__getitem__) == "payments"
    assert max(warning, key=warning.__getitem__) == "media"
