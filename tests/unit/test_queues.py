"""The queue catalog's policies are consistent with each other and with the broker."""

from __future__ import annotations

import pytest

from platform_tasks.contracts import TASKS
from platform_tasks.queues import (
    MAX_HOLD_SECONDS,
    QUEUE_NAMES,
    QUEUES,
    QueueName,
    RetryPolicy,
    policy_for,
)


def test_the_four_queues_exist() -> None:
    assert set(QUEUE_NAMES) == {"email", "media", "payments", "default"}


def test_every_queue_holds_a_delayed_message_within_the_max_hold() -> None:
    for policy in QUEUES.values():
        # Waiting behind every prefetched message, then running to the hard limit.
        hold = (policy.prefetch_multiplier + 1) * policy.time_limit
        assert hold + policy.max_delay_seconds < MAX_HOLD_SECONDS
        assert policy.max_delay_seconds >= 60


def test_cpu_bound_media_runs_one_task_per_process() -> None:
    media = QUEUES[QueueName.MEDIA]
    assert (media.pool, media.concurrency, media.prefetch_multiplier) == ("prefork", 1, 1)


def test_every_task_lives_on_a_catalogued_queue_named_in_its_name() -> None:
    for name, contract in TASKS.items():
        assert name == f"platform_tasks.{contract.queue}.{name.rsplit('.', 1)[1]}"
        assert contract.queue in QUEUES


def test_unknown_queue_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known queues: email, media, payments, default"):
        policy_for("emails")


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    policy = RetryPolicy(max_retries=5, backoff_seconds=2, backoff_max_seconds=20, jitter=False)
    assert [policy.countdown(n) for n in range(6)] == [2, 4, 8, 16, 20, 20]


def test_jitter_stays_between_one_step_and_the_ceiling() -> None:
    policy = RetryPolicy(max_retries=5, backoff_seconds=2, backoff_max_seconds=60)
    assert policy.countdown(3, random_fraction=0.0) == 2
    assert policy.countdown(3, random_fraction=1.0) == 16
    assert 2 <= policy.countdown(3, random_fraction=0.5) <= 16


def test_a_soft_limit_above_the_hard_limit_is_refused() -> None:
    template = QUEUES[QueueName.DEFAULT]
    with pytest.raises(ValueError, match="soft time limit must be below the hard one"):
        type(template)(**{**{f: getattr(template, f) for f in template.__slots__},
                          "soft_time_limit": 400})
