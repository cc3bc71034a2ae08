"""What a worker group's member holds, kept where the member that replaces it can read it.

A member that dies without shutting down (the kernel's OOM killer, a crash in C code, the
hard time limit's last resort) leaves the unacked records of every message it held: the
task it was running and those it had prefetched. Left alone they go back on their queue when
the visibility timeout expires (300 s by default). So each member writes the delivery tag of
every message it holds, and the score it last gave that message in the unacked index, into a
small memory-mapped file next to its liveness file. That is a memory copy per message, no
system call, and what a killed process wrote to a shared mapping is in the page cache for
the next reader.

The member the supervisor starts in its place (one to thirty seconds later) reads the file
before it consumes, and puts each of those messages back at once, as the visibility sweep
would: in one transaction, only if its record is still there *and* scored no later than the
dead member last scored it. A later score means another worker took the message again after
a sweep had put it back; that one is left alone (a duplicate run otherwise). What cannot be
put back now is left to the visibility timeout, as before.

The file is locked (``flock``) for the life of the member that writes it, and the kernel
drops the lock when that process dies however it dies: a second worker configured with the
same liveness file does without a ledger rather than read a live member's entries.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import WatchError

from platform_tasks.heartbeat import liveness_file
from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: One entry: a state byte (0 free, 1 held), the tag's length, padding, the score (a double,
#: 8-byte aligned) and the tag.
_HEADER = struct.Struct("<BB6xd")
SLOT_BYTES = 64
MAX_TAG_BYTES = SLOT_BYTES - _HEADER.size
#: Entries per file: a member holds its prefetch plus the task it runs; a message beyond this
#: is simply not recorded (the visibility timeout covers it).
SLOTS = 256
_HELD = 1
#: Scores travel through Redis as text; a record scored later than this after the dead
#: member's last score was taken again by another worker.
SCORE_SLACK_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """A message a member held when it stopped: its tag and the score it last gave it."""

    delivery_tag: str
    score: float


def ledger_file(settings: Settings, queue: str, member: int) -> Path:
    """The ledger of member ``member`` of ``queue``'s worker group, beside its liveness file."""
    return liveness_file(settings, queue, member).with_suffix(".held")


class HeldLedger:
    """One member's ledger file, mapped into memory and locked while the member lives."""

    def __init__(self, fd: int, slots: int) -> None:
        self._fd = fd
        self._map = mmap.mmap(fd, slots * SLOT_BYTES)
        self._slot_of: dict[str, int] = {}
        self._free = list(range(slots - 1, -1, -1))
        # The consumer loop adds and removes; the visibility heartbeat's thread rescores.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, slots: int = SLOTS) -> tuple[HeldLedger, list[HeldEntry]] | None:
        """Lock and map ``path``; the entries a previous member left in it, which stay in the
        file, with their scores, until :meth:`remove`: should this process die before dealing
        with them, the next one finds them too.

        None when another live process holds the lock (it uses this file).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            size = slots * SLOT_BYTES
            previous = _read_entries(os.pread(fd, size, 0)) if os.fstat(fd).st_size else []
            os.ftruncate(fd, 0)  # written again whole: a file of another size starts clean too
            os.ftruncate(fd, size)
            ledger = cls(fd, slots)
            for entry in previous:
                ledger.add(entry.delivery_tag, entry.score)
            return ledger, previous
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Unmap and unlock (a member never does: its ledger lives as long as it does)."""
        self._map.close()
        os.close(self._fd)

    def add(self, delivery_tag: str, score: float) -> None:
        """Record a message taken, scored ``score`` in the unacked index (or just before)."""
        encoded = delivery_tag.encode()
        if len(encoded) > MAX_TAG_BYTES:
            return
        with self._lock:
            slot = self._slot_of.get(delivery_tag)
            if slot is None:
                if not self._free:
                    return
                slot = self._free.pop()
                self._slot_of[delivery_tag] = slot
            offset = slot * SLOT_BYTES
            entry = _HEADER.pack(0, len(encoded), score) + encoded
            self._map[offset:offset + len(entry)] = entry
            # Marked held last: a process killed half way leaves a free slot, never a torn tag.
            self._map[offset] = _HELD

    def remove(self, delivery_tag: str) -> None:
        """Forget a message acknowledged, rejected or put back."""
        with self._lock:
            slot = self._slot_of.pop(delivery_tag, None)
            if slot is None:
                return
            self._map[slot * SLOT_BYTES] = 0
            self._free.append(slot)

    def rescore(self, delivery_tags: Iterable[str], score: float) -> None:
        """The visibility heartbeat gave these messages ``score`` (after writing it to Redis:
        a member killed in between leaves the older score, and its messages to the timeout)."""
        packed = struct.pack("<d", score)
        with self._lock:
            for delivery_tag in delivery_tags:
                slot = self._slot_of.get(delivery_tag)
                if slot is not None:
                    offset = slot * SLOT_BYTES + 8
                    self._map[offset:offset + 8] = packed


def read_ledger(path: Path) -> list[HeldEntry]:
    """The entries in a ledger file as it is now, without taking it (inspection, tests)."""
    try:
        return _read_entries(path.read_bytes())
    except FileNotFoundError:
        return []


def _read_entries(data: bytes) -> list[HeldEntry]:
    entries = []
    for offset in range(0, len(data) - SLOT_BYTES + 1, SLOT_BYTES):
        state, length, score = _HEADER.unpack_from(data, offset)
        if state != _HELD or not 0 < length <= MAX_TAG_BYTES:
            continue
        start = offset + _HEADER.size
        try:
            tag = data[start:start + length].decode()
        except UnicodeDecodeError:
            continue
        entries.append(HeldEntry(tag, score))
    return entries


#: This process's ledger (a worker group's member only), and what its predecessor left.
LEDGER: HeldLedger | None = None
_previous: list[HeldEntry] = []


def open_for_member(path: Path) -> None:
    """Start this member's ledger at ``path``; its predecessor's entries (still in it) are
    for :func:`put_back_previous`."""
    global LEDGER
    opened = HeldLedger.open(path)
    if opened is None:
        logger.warning("%s is in use by another worker (the same liveness file?); this member "
                       "keeps no ledger: if it dies, what it held waits for the visibility "
                       "timeout", path)
        return
    LEDGER, previous = opened
    _previous.extend(previous)
    if previous:
        logger.info("%d messages held by the previous member (in %s) are put back once this "
                    "one consumes", len(previous), path)


#: Tries of one put-back's transaction while other workers change the keys it watches.
PUT_BACK_ATTEMPTS = 20


class PutBackContendedError(Exception):
    """The unacked keys kept changing under a put-back's transaction."""


def put_back_previous(channel: Any) -> None:
    """Put back on their queues the messages a dead predecessor held (see the module's
    docstring); called when a channel starts consuming. What a failure leaves is tried again
    at the next call (a new connection's consume)."""
    ledger = LEDGER
    if not _previous or ledger is None:
        return
    if channel.global_keyprefix:  # not the platform's configuration; keys would not match
        return
    entries = list(_previous)
    put_back = dealt_with = 0
    try:
        with channel.conn_or_acquire() as client:
            for entry in entries:
                try:
                    put_back += put_back_entry(channel, client, entry)
                except (ValueError, TypeError, PutBackContendedError) as error:
                    # This one record is unreadable, or too busy to settle now: the
                    # visibility timeout puts it back.
                    logger.warning("could not put back message %s that the previous member "
                                   "held (%s); it goes back after the visibility timeout",
                                   entry.delivery_tag, error)
                _previous.remove(entry)
                ledger.remove(entry.delivery_tag)
                dealt_with += 1
    except Exception as error:
        logger.warning("put back %d of the messages the previous member held; %d more are "
                       "tried when this member next connects (%s)", put_back,
                       len(entries) - dealt_with, error)
        return
    logger.warning("put back %d of %d messages the previous member held when it stopped; "
                   "the others were acknowledged, re-scored or taken again since", put_back,
                   len(entries))


def put_back_entry(channel: Any, client: Any, entry: HeldEntry) -> bool:
    """Put one message a dead member held back on its queue if its record is as the member
    left it (see the module's docstring); whether it was.

    Both unacked keys are watched, and every fetch, ack and refresh of every worker changes
    them: the transaction is tried :data:`PUT_BACK_ATTEMPTS` times at most.
    """
    unacked_key, index_key = channel.unacked_key, channel.unacked_index_key
    with client.pipeline() as pipe:
        for _ in range(PUT_BACK_ATTEMPTS):
            try:
                pipe.watch(unacked_key, index_key)
                score = pipe.zscore(index_key, entry.delivery_tag)
                recorded = pipe.hget(unacked_key, entry.delivery_tag)
                if (score is None or recorded is None
                        or score > entry.score + SCORE_SLACK_SECONDS):
                    pipe.unwatch()
                    return False
                payload, exchange, routing_key = json.loads(recorded)
                pipe.multi()
                pipe.zrem(index_key, entry.delivery_tag)
                pipe.hdel(unacked_key, entry.delivery_tag)
                # Rightmost, as the visibility sweep does: it was taken first, it runs next.
                channel._do_restore_message(payload, exchange, routing_key, pipe,
                                            leftmost=False)
                pipe.execute()
                return True
            except WatchError:
                continue
    raise PutBackContendedError(f"the unacked keys changed under {PUT_BACK_ATTEMPTS} tries")
