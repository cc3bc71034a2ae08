"""The ledger table's format is stable, and docs/reliability.md has its place for it (no
servers: this runs with the unit tests' speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from checker import Counts
from ledger_table import DOC, END, HEADER, START, Row, merge, parse, render, section, write


def counts(scenario: str, lost: int = 0) -> Counts:
    return Counts(scenario=scenario, attempted=200, acknowledged=198, executed=198,
                  duplicates=3, lost=lost, unexpected=0, dead_lettered=0, effects_once=198,
                  effects_expected=198)


def test_a_row_renders_as_the_documented_columns() -> None:
    table = render([Row.of(counts("7 master SIGKILLed"), "pass")])

    assert table == (
        "| scenario | attempted | acknowledged | executed | duplicates | lost | unexpected "
        "| dead-lettered | effects once | result |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| 7 master SIGKILLed | 200 | 198 | 198 | 3 | 0 | 0 | 0 | 198/198 | pass |\n"
    )
    assert HEADER[0] == "scenario"
    assert HEADER[-1] == "result"


def test_rows_are_ordered_by_scenario_number_and_survive_a_round_trip() -> None:
    rows = [Row.of(counts(name), "pass") for name in ("10 reply lost", "2 worker", "1 child")]
    rows.append(Row.of(counts("8 partition", lost=4), "xfail: WAIT | not landed"))

    parsed = parse(render(rows))

    assert [row.scenario for row in parsed] == ["1 child", "2 worker", "8 partition",
                                                "10 reply lost"]
    assert parsed[2].cells[-1] == "xfail: WAIT | not landed"
    assert sorted(parsed, key=lambda row: row.scenario) == sorted(rows,
                                                                  key=lambda row: row.scenario)


def test_a_partial_run_replaces_only_its_own_rows() -> None:
    old = [Row.of(counts(name), "pass") for name in ("1 child", "2 worker")]
    new = [Row.of(counts("2 worker", lost=1), "FAIL")]

    merged = merge(old, new)

    assert [row.cells[-1] for row in merged] == ["pass", "FAIL"]


def test_write_touches_only_the_text_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Title\n\nprose before\n\n{START}\n{END}\n\nprose after\n")

    write([Row.of(counts("1 child"), "pass")], doc)
    write([Row.of(counts("3 term"), "pass")], doc)

    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n" + START + "\n| scenario |")
    assert text.endswith(END + "\n\nprose after\n")
    begin, end = section(text)
    assert [row.scenario for row in parse(text[begin:end])] == ["1 child", "3 term"]


def test_a_document_without_markers_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# no table here\n")
    with pytest.raises(ValueError, match="ledger-table"):
        write([Row.of(counts("1 child"), "pass")], doc)


def test_the_reliability_page_holds_a_table_the_suite_can_rewrite() -> None:
    text = DOC.read_text()
    begin, end = section(text)
    table = text[begin:end].strip()
    if table:
        rows = parse(table)
        assert render(rows) == table + "\n", "the table drifted from what the suite writes"
