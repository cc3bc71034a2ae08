"""Marks along a platform worker's path from a fetched message to its task's start.

Loaded by Python's ``site`` at start-up in every process whose ``PYTHONPATH`` holds this
directory: ``bench/latency_breakdown.py`` puts it there for the worker it starts, and sets
``LATENCY_TRACE_DIR``. Only a worker group's members (``worker --member N``) are marked; any
other process, or a run without the variable, gets nothing from this file. (Being first
on the path, it stands in for any other ``sitecustomize`` in that worker only.)

Each mark is a name and ``time.time_ns()``, kept in memory and written to
``LATENCY_TRACE_DIR/marks-<pid>.txt`` after the task has run (``task_postrun``), so the
writes are never on the path being timed. The worker's own code is not changed: functions
are wrapped in place before the worker imports them into anything that keeps a reference.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

_DIRECTORY = os.environ.get("LATENCY_TRACE_DIR")
_marks: list[tuple[str, int]] = []


def _mark(name: str) -> None:
    _marks.append((name, time.time_ns()))


def _write_marks() -> None:
    if not _marks or _DIRECTORY is None:
        return
    lines = "".join(f"{name} {stamp}\n" for name, stamp in _marks)
    _marks.clear()
    with open(os.path.join(_DIRECTORY, f"marks-{os.getpid()}.txt"), "a") as marks:
        marks.write(lines)


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    _mark(f"gc{info['generation']}-{phase}")


def _wrap_function(owner: Any, name: str, mark: str) -> None:
    original = getattr(owner, name)

    def marked(*args: Any, **kwargs: Any) -> Any:
        _mark(mark)
        return original(*args, **kwargs)

    setattr(owner, name, marked)


def _wrap_signal(signal: Any, mark: str, *, after: bool = False) -> None:
    original = signal.send

    def send(*args: Any, **kwargs: Any) -> Any:
        if not after:
            _mark(mark)
            return original(*args, **kwargs)
        replies = original(*args, **kwargs)
        _mark(mark)
        _write_marks()
        return replies

    signal.send = send


def _install() -> None:
    from celery import signals
    from kombu.transport.virtual import base

    from platform_tasks import broker_transport, fetch_script

    # The reply of the combined wait and fetch is in: the event loop reads it.
    _wrap_function(broker_transport._FetchesInBatches, "_brpop_read", "reply-readable")
    _wrap_function(fetch_script, "parse_reply", "reply-read")
    _wrap_function(base.Transport, "_deliver", "delivered-to-kombu")
    _wrap_signal(signals.task_received, "task_received")
    _wrap_signal(signals.task_prerun, "task_prerun")
    _wrap_signal(signals.task_postrun, "task_postrun-done", after=True)
    gc.callbacks.append(_on_collection)


if _DIRECTORY and "worker" in sys.argv and "--member" in sys.argv:
    _install()
