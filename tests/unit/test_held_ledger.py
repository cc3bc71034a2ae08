"""A member's ledger of held messages: what it writes is what its successor reads, even when
the writer is killed; one live process per file; a successor starts from a clean file."""

from __future__ import annotations

import os
import signal
import struct
import uuid
from pathlib import Path

import pytest

from platform_tasks import held_ledger
from platform_tasks.held_ledger import SLOT_BYTES, HeldEntry, HeldLedger, read_ledger
from platform_tasks.settings import load_settings


def opened(path: Path, slots: int = held_ledger.SLOTS) -> tuple[HeldLedger, list[HeldEntry]]:
    result = HeldLedger.open(path, slots)
    assert result is not None
    return result


def tags(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def killed_writer(path: Path, added: list[tuple[str, float]],
                  removed: tuple[str, ...] | list[str] = ()) -> None:
    """A process that writes ``path``'s ledger and is SIGKILLed: no exit handler runs."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child is killed
        ledger, _ = opened(path)
        for tag, score in added:
            ledger.add(tag, score)
        for tag in removed:
            ledger.remove(tag)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


def test_the_file_lists_what_is_held_with_its_last_score(tmp_path: Path) -> None:
    path = tmp_path / "default-1.held"
    ledger, previous = opened(path)
    assert previous == []
    first, second, third = tags(3)
    ledger.add(first, 100.0)
    ledger.add(second, 101.5)
    ledger.add(third, 102.0)
    ledger.remove(second)
    ledger.rescore([first, second], 200.25)  # second is gone: not written back
    ledger.add(third, 103.0)  # taken again by the same member: one entry, the new score

    assert sorted(read_ledger(path), key=lambda entry: entry.delivery_tag) == sorted(
        [HeldEntry(first, 200.25), HeldEntry(third, 103.0)],
        key=lambda entry: entry.delivery_tag)
    ledger.remove(first)
    ledger.remove(third)
    assert read_ledger(path) == []
    ledger.add(second, 5.0)  # slots freed by remove() are used again
    assert read_ledger(path) == [HeldEntry(second, 5.0)]


def test_a_killed_writer_leaves_its_entries_to_the_next_one_until_it_removes_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "default-1.held"
    held = tags(3)
    killed_writer(path, [(tag, 1000.0 + index) for index, tag in enumerate(held)],
                  removed=[held[1]])

    ledger, previous = opened(path)
    assert sorted(previous, key=lambda entry: entry.score) == [
        HeldEntry(held[0], 1000.0), HeldEntry(held[2], 1002.0)]
    # Kept in the file until the successor deals with them; the removed one is gone.
    assert sorted(read_ledger(path), key=lambda entry: entry.score) == sorted(
        previous, key=lambda entry: entry.score)
    ledger.remove(held[2])
    ledger.add(held[0], 2000.0)
    assert read_ledger(path) == [HeldEntry(held[0], 2000.0)]


def test_a_file_in_use_by_a_live_process_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "default-1.held"
    ledger, _ = opened(path)
    ledger.add(str(uuid.uuid4()), 1.0)

    assert HeldLedger.open(path) is None  # another open file: the lock is held
    assert len(read_ledger(path)) == 1  # and its entries were left alone
    ledger.close()
    taken = HeldLedger.open(path)  # the lock went with the first one
    assert taken is not None
    assert len(taken[1]) == 1
    taken[0].close()


def test_a_half_written_entry_a_long_tag_and_a_full_file_are_not_entries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "default-1.held"
    ledger, _ = opened(path, slots=2)
    ledger.add("x" * (held_ledger.MAX_TAG_BYTES + 1), 1.0)  # not recorded, no error
    first, second, third = tags(3)
    ledger.add(first, 1.0)
    ledger.add(second, 2.0)
    ledger.add(third, 3.0)  # no slot left: left to the visibility timeout
    assert {entry.delivery_tag for entry in read_ledger(path)} == {first, second}

    # A writer killed between writing an entry and marking it held left its state byte 0.
    torn = struct.pack("<BB6xd", 0, 36, 9.0) + third.encode()
    data = torn.ljust(SLOT_BYTES, b"\0") + b"\x01\xff" + bytes(SLOT_BYTES - 2)
    path.write_bytes(data)
    assert read_ledger(path) == []


def test_a_file_of_another_size_or_none_at_all_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "alive" / "default-1.held"
    ledger, previous = opened(path)  # the directory is made
    assert previous == []
    ledger.close()
    short = tmp_path / "short.held"
    short.write_bytes(b"\x01garbage")
    ledger, previous = opened(short, slots=4)
    ledger.close()
    assert previous == []
    assert short.stat().st_size == 4 * SLOT_BYTES
    assert read_ledger(tmp_path / "missing.held") == []


def test_each_member_has_its_ledger_beside_its_liveness_file(tmp_path: Path) -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0",
                              "PLATFORM_TASKS_HEARTBEAT_FILE": str(tmp_path / "default.alive")})
    assert held_ledger.ledger_file(settings, "default", 1) == tmp_path / "default-1.held"
    assert held_ledger.ledger_file(settings, "default", 2) == tmp_path / "default-2.held"


@pytest.fixture(autouse=True)
def _no_process_ledger() -> None:
    # These tests open ledgers of their own; none is this process's.
    assert held_ledger.LEDGER is None


def test_a_successor_keeps_its_predecessors_entries_until_they_are_dealt_with(
    tmp_path: Path,
) -> None:
    path = tmp_path / "default-1.held"
    held = tags(2)
    killed_writer(path, [(held[0], 10.0), (held[1], 11.0)])

    held_ledger.open_for_member(path)
    try:
        assert held_ledger.LEDGER is not None
        # Still in the file, with the dead member's scores: should this member die before
        # putting them back, its own successor finds them.
        expected = [HeldEntry(held[0], 10.0), HeldEntry(held[1], 11.0)]
        assert sorted(read_ledger(path), key=lambda entry: entry.score) == expected
        assert held_ledger._previous == expected
    finally:
        if held_ledger.LEDGER is not None:
            held_ledger.LEDGER.close()
        held_ledger.LEDGER = None
        held_ledger._previous.clear()
