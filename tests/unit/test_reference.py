"""The generated reference tables in docs/ match the code they are generated from."""

from __future__ import annotations

from pathlib import Path

from platform_tasks import reference

ROOT = Path(__file__).resolve().parents[2]


def test_generated_docs_match_the_code() -> None:
    assert reference.drifted(ROOT) == [], (
        "docs drifted from the code: run .venv/bin/python -m platform_tasks.reference --write"
    )


def test_a_changed_table_is_detected(tmp_path: Path) -> None:
    for relative in reference.SECTIONS:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / relative).read_text().replace("| `email` |", "| `mail` |"))
    assert Path("docs/queues.md") in reference.drifted(tmp_path)
