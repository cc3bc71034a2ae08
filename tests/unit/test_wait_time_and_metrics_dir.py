"""Wait time from the producer's header, and the multiprocess directory's preparation."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from platform_tasks import headers
from platform_tasks.observability import multiprocess_dir
from platform_tasks.observability.worker_metrics import wait_seconds
from platform_tasks.settings import load_settings

NOW = 1_800_000_000.0


def request(enqueued_at: object = None, eta: object = None) -> SimpleNamespace:
    task_headers = {} if enqueued_at is None else {headers.ENQUEUED_AT: enqueued_at}
    return SimpleNamespace(headers=task_headers, eta=eta)


def test_wait_counts_from_the_publish() -> None:
    assert wait_seconds(request(NOW - 2.5), NOW) == pytest.approx(2.5)


def test_wait_of_a_countdown_task_counts_from_its_eta() -> None:
    eta = datetime.fromtimestamp(NOW - 1, UTC).isoformat()
    assert wait_seconds(request(NOW - 3600, eta), NOW) == pytest.approx(1.0)


def test_no_header_or_a_bad_one_is_not_observed_and_clock_skew_is_not_negative() -> None:
    assert wait_seconds(request(), NOW) is None
    assert wait_seconds(request("yesterday"), NOW) is None
    assert wait_seconds(request(NOW + 5), NOW) == 0.0


def settings_with_dir(directory: Path) -> object:
    return load_settings({
        "PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1",
        "PLATFORM_TASKS_METRICS_DIR": str(directory),
    })


def test_prepare_empties_the_last_runs_files_and_exports_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(multiprocess_dir.ENV_VAR, "")
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old")
    (directory / "keep.txt").write_text("not ours")

    prepared = multiprocess_dir.prepare(settings_with_dir(directory))  # type: ignore[arg-type]

    assert prepared == directory
    assert os.environ[multiprocess_dir.ENV_VAR] == str(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


def test_prepare_refuses_once_prometheus_client_loaded_without_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prometheus_client  # noqa: F401 - the point is that it is loaded

    monkeypatch.delenv(multiprocess_dir.ENV_VAR, raising=False)
    with pytest.raises(multiprocess_dir.MetricsSetupError, match="imported before"):
        multiprocess_dir.prepare(settings_with_dir(tmp_path))  # type: ignore[arg-type]


def test_an_unwritable_directory_is_named_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(multiprocess_dir.ENV_VAR, "")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(multiprocess_dir.MetricsSetupError, match="PLATFORM_TASKS_METRICS_DIR"):
        multiprocess_dir.prepare(settings_with_dir(blocker / "metrics"))  # type: ignore[arg-type]
