"""The ledger checker: from what was recorded, the counts a scenario is judged by.

In the style of Jepsen's queue checker. Tasks are told apart by their idempotency key (see
:mod:`ledger`). A task is *acknowledged* when its publish returned;
it is *lost* when acknowledged and never executed; *unexpected* when executed and never
attempted; a *duplicate* is any execution of a task beyond its first. Its side effect must
have been applied exactly once for every acknowledged task, and never twice for any task.
Tasks in the dead-letter list are accounted for only when their kind is one the scenario
expects there (poison, garbage); any other dead-lettered task that never ran is lost.

Pure functions over a :class:`ledger.Snapshot`, so the rules are unit-tested without servers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ledger import BEAT_KIND_PREFIX, Snapshot

#: How many ids of each kind of failure a report names.
SAMPLE = 5


@dataclass(frozen=True)
class Counts:
    """One scenario's outcome: the row it gets in the table, plus evidence for a failure."""

    scenario: str
    attempted: int
    acknowledged: int
    executed: int
    duplicates: int
    lost: int
    unexpected: int
    dead_lettered: int
    #: Acknowledged tasks whose effect was applied exactly once, of those that owe one.
    effects_once: int
    effects_expected: int
    #: Effects applied more than once (a broken idempotency guard); must be 0.
    effects_repeated: int = 0
    #: Of the lost: how many still sat on a queue or in the unacked hash when the drain ended
    #: (a worker that stopped consuming strands them; they are not gone from Redis).
    stranded: int = 0
    lost_sample: tuple[str, ...] = field(default=())
    unexpected_sample: tuple[str, ...] = field(default=())

    @property
    def effects_ok(self) -> bool:
        return self.effects_once == self.effects_expected and self.effects_repeated == 0

    @property
    def ok(self) -> bool:
        """The suite's promise: nothing acknowledged lost, nothing invented, effects once."""
        return self.lost == 0 and self.unexpected == 0 and self.effects_ok

    def summary(self) -> str:
        text = (
            f"{self.scenario}: attempted={self.attempted} acknowledged={self.acknowledged} "
            f"executed={self.executed} duplicates={self.duplicates} lost={self.lost} "
            f"unexpected={self.unexpected} dead_lettered={self.dead_lettered} "
            f"effects_once={self.effects_once}/{self.effects_expected}"
        )
        if self.effects_repeated:
            text += f" effects_repeated={self.effects_repeated}"
        if self.stranded:
            text += f" stranded={self.stranded}"
        if self.lost_sample:
            text += f" lost_ids={list(self.lost_sample)}"
        if self.unexpected_sample:
            text += f" unexpected_ids={list(self.unexpected_sample)}"
        return text


def dead_lettered_ids(candidates: Iterable[str], entries: Iterable[str]) -> set[str]:
    """Which of ``candidates`` (idempotency keys) a dead letter mentions.

    A dead task's key is among its arguments; garbage pushed onto a queue has no arguments a
    worker could read, so its key is a marker written into its bytes. Either way it is found
    in the entry's text.
    """
    texts = list(entries)
    return {candidate for candidate in candidates if any(candidate in text for text in texts)}


def check(
    scenario: str,
    snapshot: Snapshot,
    *,
    dead_letters: Iterable[str] = (),
    dead_letter_kinds: Collection[str] = (),
    stranded_ids: Iterable[str] = (),
    tick_period: float | None = None,
) -> Counts:
    """Count ``snapshot``'s outcome. ``dead_letters`` are the dead-letter entries as text;
    a dead-lettered task whose kind is in ``dead_letter_kinds`` is accounted for.

    With ``tick_period`` (beat), two runs sent less than half a period apart are one tick run
    twice, and count as a duplicate even though each has its own task id.
    """
    attempted = set(snapshot.attempts)
    acknowledged = set(snapshot.acks)
    runs = Counter(execution.key for execution in snapshot.executions)
    executed = set(runs)
    duplicates = sum(count - 1 for count in runs.values())
    if tick_period is not None:
        duplicates += tick_duplicates(snapshot, tick_period)

    dead = dead_lettered_ids(attempted, dead_letters)
    excused = {key for key in dead if snapshot.attempts[key].kind in dead_letter_kinds}
    accounted = executed | excused
    lost = sorted(acknowledged - accounted)
    unexpected = sorted(executed - attempted)

    owed = [key for key in sorted(acknowledged) if key not in excused]
    once = sum(1 for key in owed if snapshot.effects_applied[key] == 1)
    repeated = sum(1 for count in snapshot.effects_applied.values() if count > 1)
    # The drain names what is left in the broker by task id; the ledger knows each key's.
    left = set(stranded_ids)
    stranded = {key for key in lost if snapshot.acks.get(key) in left}
    return Counts(
        scenario=scenario,
        attempted=len(attempted),
        acknowledged=len(acknowledged),
        executed=len(executed),
        duplicates=duplicates,
        lost=len(lost),
        unexpected=len(unexpected),
        dead_lettered=len(dead & acknowledged),
        effects_once=once,
        effects_expected=len(owed),
        effects_repeated=repeated,
        stranded=len(stranded),
        lost_sample=tuple(lost[:SAMPLE]),
        unexpected_sample=tuple(unexpected[:SAMPLE]),
    )


def tick_duplicates(snapshot: Snapshot, period: float) -> int:
    """Runs beat sent closer together than half the schedule's period (when they were sent,
    from the message's enqueued-at header)."""
    first_run: dict[str, float] = {}
    for execution in snapshot.executions:
        attempt = snapshot.attempts.get(execution.key)
        if (execution.enqueued_at is not None and attempt is not None
                and attempt.kind.startswith(BEAT_KIND_PREFIX)):
            first_run.setdefault(execution.key, execution.enqueued_at)
    sent = sorted(first_run.values())
    return sum(1 for earlier, later in itertools.pairwise(sent)
               if later - earlier < period / 2)
