"""The redelivery cap's arithmetic and the visibility heartbeat's schedule (the mechanisms
themselves run against real workers in tests/integration/test_redelivery.py)."""

from __future__ import annotations

import pytest

from platform_tasks import keys, redeliveries
from platform_tasks.app import restore_sweep_seconds
from platform_tasks.visibility import REFRESHES_PER_TIMEOUT, refresh_interval


def test_an_attempt_is_the_task_id_and_its_retry_number() -> None:
    assert redeliveries.attempt_of({"id": "abc", "retries": 2}) == ("abc", 2)
    assert redeliveries.attempt_of({"id": "abc"}) == ("abc", 0)
    assert redeliveries.attempt_of({"id": "abc", "retries": "junk"}) == ("abc", 0)
    assert redeliveries.attempt_of({"task": "no id"}) is None


def test_each_retry_has_a_count_of_its_own() -> None:
    assert keys.redelivered_runs("abc", 0) != keys.redelivered_runs("abc", 1)


@pytest.mark.parametrize(("runs", "refused"), [(0, False), (1, False), (2, True), (3, True)])
def test_the_cap_refuses_once_the_runs_after_redelivery_reach_it(
    runs: int, refused: bool
) -> None:
    assert redeliveries.over_cap(runs, max_redeliveries=2) is refused


def test_a_held_message_is_refreshed_several_times_per_timeout() -> None:
    assert refresh_interval(300) == 300 / REFRESHES_PER_TIMEOUT
    assert refresh_interval(6) == 1.0
    # Never a busy loop, never so rare that a long timeout is refreshed once.
    assert refresh_interval(1) == 0.5
    assert refresh_interval(86_400) == 60.0


def test_abandoned_messages_are_looked_for_well_within_the_timeout() -> None:
    assert restore_sweep_seconds(6) == 1
    assert restore_sweep_seconds(300) == 10
    assert restore_sweep_seconds(5) == 1
