"""``platform-tasks worker|beat --include MODULE``: how the suite's workers and beats load its
tasks and ledger hooks (no servers)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from platform_tasks import cli


@pytest.fixture
def fake_module() -> Iterator[str]:
    name = "reliability_include_probe"
    module = types.ModuleType(name)
    sys.modules[name] = module
    yield name
    del sys.modules[name]


@pytest.mark.parametrize("command", [["worker", "--queue", "default"], ["beat"]])
def test_include_is_repeatable_and_defaults_to_none(command: list[str]) -> None:
    parser = cli.build_parser()

    assert parser.parse_args(command).include == []
    assert parser.parse_args([*command, "--include", "a", "--include", "b.c"]).include == [
        "a", "b.c"]


def test_an_included_module_is_imported(fake_module: str) -> None:
    cli._import_modules([fake_module, "json"])

    assert fake_module in sys.modules


def test_a_misspelt_module_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError, match="no module named 'no_such_ledger_module'"):
        cli._import_modules(["no_such_ledger_module"])


def test_a_module_whose_own_import_fails_is_not_hidden(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken_include_probe.py"
    broken.write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_it"):
        cli._import_modules(["broken_include_probe"])
