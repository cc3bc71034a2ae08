"""The summary table the suite writes into ``docs/reliability.md``, between two markers.

Rows are merged by scenario: a run of some scenarios replaces their rows and keeps the
others', so running one test does not wipe the rest of the table. Rows are ordered by the
scenario's number (the text before the first space, e.g. ``7``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from checker import Counts

START = "<!-- ledger-table:start -->"
END = "<!-- ledger-table:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

HEADER = ("scenario", "attempted", "acknowledged", "executed", "duplicates", "lost",
          "unexpected", "dead-lettered", "effects once", "result")


@dataclass(frozen=True)
class Row:
    """One line of the table, as text cells in :data:`HEADER` order."""

    cells: tuple[str, ...]

    @property
    def scenario(self) -> str:
        return self.cells[0]

    @classmethod
    def of(cls, counts: Counts, result: str) -> Row:
        return cls((
            counts.scenario,
            str(counts.attempted),
            str(counts.acknowledged),
            str(counts.executed),
            str(counts.duplicates),
            str(counts.lost),
            str(counts.unexpected),
            str(counts.dead_lettered),
            f"{counts.effects_once}/{counts.effects_expected}",
            result,
        ))


def _sort_key(row: Row) -> tuple[int, str]:
    number = row.scenario.split(" ", 1)[0]
    return (int(number) if number.isdigit() else 1_000, row.scenario)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def render(rows: Iterable[Row]) -> str:
    """The markdown table (header, rule, one line per row, sorted), ending in a newline."""
    # Counts right-aligned; the scenario and the result are words, left-aligned.
    rule = ["---", *["---:"] * (len(HEADER) - 2), "---"]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(rule) + "|"]
    for row in sorted(rows, key=_sort_key):
        lines.append("| " + " | ".join(_escape(cell) for cell in row.cells) + " |")
    return "\n".join(lines) + "\n"


_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def parse(table: str) -> list[Row]:
    """The rows of a table :func:`render` wrote (header and rule skipped)."""
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip().replace("\\|", "|")
                 for cell in _CELL_SPLIT.split(line.strip().strip("|"))]
        if len(cells) != len(HEADER):
            raise ValueError(f"a table row needs {len(HEADER)} cells: {line!r}")
        rows.append(Row(tuple(cells)))
    return rows


def section(text: str) -> tuple[int, int]:
    """Where the table lies in ``text``: the offsets just after START and at END."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {START} ... {END} section")
    return start + len(START), end


def merge(old: Sequence[Row], new: Sequence[Row]) -> list[Row]:
    """``old`` with each scenario that ``new`` has replaced by its new row."""
    replaced = {row.scenario: row for row in new}
    kept = [row for row in old if row.scenario not in replaced]
    return sorted([*kept, *replaced.values()], key=_sort_key)


def write(rows: Sequence[Row], doc: Path = DOC) -> None:
    """Put ``rows`` (merged with the table already there) between the markers of ``doc``."""
    text = doc.read_text()
    begin, end = section(text)
    existing = text[begin:end].strip()
    old = parse(existing) if existing else []
    table = render(merge(old, rows))
    doc.write_text(text[:begin] + "\n" + table + text[end:])
