"""The checker's rules on hand-made ledgers (no servers)."""

from __future__ import annotations

from collections import Counter

from checker import check, dead_lettered_ids
from ledger import Attempt, Execution, Snapshot


def ledger(
    attempted: list[str],
    acked: list[str],
    runs: list[str],
    applied: list[str] | None = None,
    sent_at: dict[str, float] | None = None,
    kind: str = "work",
) -> Snapshot:
    """A ledger of tasks named by their keys: attempted, acknowledged, run, effects applied."""
    return Snapshot(
        attempts={k: Attempt(k, "default", kind, 0.0) for k in attempted},
        acks={k: f"id-{k}" for k in acked},
        publish_errors={},
        executions=[Execution(f"id-{k}", k, 1, "default", 2.0,
                              enqueued_at=(sent_at or {}).get(k)) for k in runs],
        effects_applied=Counter(applied if applied is not None else runs),
        effect_tries=Counter(),
    )


def test_a_clean_run_keeps_the_promise() -> None:
    counts = check("s", ledger(["a", "b"], ["a", "b"], ["a", "b"]))

    assert (counts.attempted, counts.acknowledged, counts.executed) == (2, 2, 2)
    assert (counts.duplicates, counts.lost, counts.unexpected) == (0, 0, 0)
    assert (counts.effects_once, counts.effects_expected) == (2, 2)
    assert counts.ok


def test_an_acknowledged_task_that_never_ran_is_lost() -> None:
    counts = check("s", ledger(["a", "b"], ["a", "b"], ["a"]), stranded_ids=["id-b", "id-x"])

    assert counts.lost == 1
    assert counts.lost_sample == ("b",)
    assert counts.stranded == 1
    assert counts.effects_once == 1
    assert not counts.ok


def test_a_publish_that_raised_may_run_or_not_without_counting_as_lost() -> None:
    # "b" was attempted, its publish raised (no ack), and it ran anyway: the reply was lost.
    counts = check("s", ledger(["a", "b", "c"], ["a"], ["a", "b"]))

    assert counts.lost == 0
    assert counts.unexpected == 0
    assert counts.ok
    assert counts.executed == 2


def test_runs_beyond_the_first_are_duplicates_but_the_effect_stays_once() -> None:
    counts = check("s", ledger(["a"], ["a"], ["a", "a", "a"], applied=["a"]))

    assert counts.duplicates == 2
    assert counts.ok


def test_an_effect_applied_twice_breaks_the_promise() -> None:
    counts = check("s", ledger(["a"], ["a"], ["a", "a"], applied=["a", "a"]))

    assert counts.effects_repeated == 1
    assert counts.effects_once == 0
    assert not counts.ok


def test_a_run_nobody_attempted_is_unexpected() -> None:
    counts = check("s", ledger(["a"], ["a"], ["a", "z"]))

    assert counts.unexpected == 1
    assert counts.unexpected_sample == ("z",)
    assert not counts.ok


def test_dead_letters_account_only_for_the_kinds_the_scenario_expects_there() -> None:
    snapshot = ledger(["task-1", "task-2"], ["task-1", "task-2"], ["task-1"])
    entries = ['{"reason": "redelivered_too_often", "task_id": "task-2"}']

    expected = check("s", snapshot, dead_letters=entries, dead_letter_kinds={"work"})
    unexpected = check("s", snapshot, dead_letters=entries, dead_letter_kinds={"poison"})

    assert expected.lost == 0
    assert expected.dead_lettered == 1
    assert expected.ok
    assert expected.effects_expected == 1
    assert unexpected.lost == 1
    assert not unexpected.ok


def test_garbage_is_found_by_the_marker_written_into_its_bytes() -> None:
    found = dead_lettered_ids(["garbage-1", "garbage-2"],
                              ['{"message": "junk \\u0000 garbage-1"}'])

    assert found == {"garbage-1"}


def test_two_beat_runs_within_half_a_period_are_one_tick_run_twice() -> None:
    sent = {"t1": 100.0, "t2": 102.1, "t3": 102.4, "t4": 104.5}
    ticks = ledger(list(sent), list(sent), list(sent), sent_at=sent, kind="beat:42")
    work = ledger(list(sent), list(sent), list(sent), sent_at=sent)

    assert check("s", ticks, tick_period=2.0).duplicates == 1
    assert check("s", ticks).duplicates == 0
    # Only beat's runs are ticks: the producer's tasks may come as close as they like.
    assert check("s", work, tick_period=2.0).duplicates == 0
