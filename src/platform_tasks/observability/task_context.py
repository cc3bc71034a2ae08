"""Task context on every log line inside a task, and each lifecycle event logged once.

``task_prerun`` binds the task's identity (:mod:`bound_context`), so any line the task logs
(structlog or stdlib) carries it; ``task_postrun`` clears it. The events received,
rejected and revoked happen in the worker's main process, outside any task, and carry the
same fields read from the message.
"""

from __future__ import annotations

import os
import time
import traceback
from types import TracebackType
from typing import Any

import structlog
from celery import signals

from platform_tasks import headers, run_signals
from platform_tasks.observability import bound_context
from platform_tasks.observability.logging import (
    SplicedLine,
    emit,
    encode_fields,
    id_splicing,
)

_LOGGER = "platform_tasks.task"
logger = structlog.get_logger(_LOGGER)


def _correlation(request: Any) -> Any:
    value = headers.read(request, headers.CORRELATION_ID)
    if value is None:
        request_dict = getattr(request, "request_dict", None)
        if isinstance(request_dict, dict):
            value = request_dict.get(headers.CORRELATION_ID)
    return value


def _queue(request: Any) -> Any:
    delivery_info = getattr(request, "delivery_info", None) or {}
    return delivery_info.get("routing_key") or delivery_info.get("queue")


def _retries(request: Any) -> int:
    # A running task's request has ``retries``; the worker's Request (received, revoked)
    # keeps it only in the message headers, its ``request_dict``.
    value = getattr(request, "retries", None)
    if value is None:
        request_dict = getattr(request, "request_dict", None)
        if isinstance(request_dict, dict):
            value = request_dict.get("retries")
    return int(value or 0)


def request_fields(request: Any, task_name: str | None = None) -> dict[str, Any]:
    """The fields that identify a task, from a running task's or a worker's request."""
    message = getattr(request, "request_dict", None)
    if type(message) is dict and "id" in message:
        return _message_fields(request, message, task_name)
    return {
        "task_id": getattr(request, "id", None),
        "task_name": task_name or getattr(request, "task", None) or getattr(
            request, "name", None
        ),
        "queue": _queue(request),
        "retries": _retries(request),
        "worker": getattr(request, "hostname", None),
        "correlation_id": _correlation(request),
        "parent_id": getattr(request, "parent_id", None),
        "root_id": getattr(request, "root_id", None),
    }


def _message_fields(request: Any, message: dict[str, Any],
                    task_name: str | None) -> dict[str, Any]:
    # The worker's Request (received, revoked) keeps the message's headers in a dict: read
    # there, a field it lacks is a dict miss rather than a failed attribute lookup.
    return {
        "task_id": message["id"],
        "task_name": task_name or message.get("task") or getattr(request, "name", None),
        "queue": _queue(request),
        "retries": int(message.get("retries") or 0),
        "worker": getattr(request, "hostname", None),
        "correlation_id": message.get(headers.CORRELATION_ID),
        "parent_id": message.get("parent_id"),
        "root_id": message.get("root_id"),
    }


#: The names request_fields returns.
_FIELD_NAMES = frozenset(
    ("task_id", "task_name", "queue", "retries", "worker", "correlation_id", "parent_id",
     "root_id")
)

_RECEIVED_LINE = SplicedLine(_LOGGER, "info", "task_received", _FIELD_NAMES, fields_first=True)
_STARTED_LINE = SplicedLine(_LOGGER, "info", "task_started", _FIELD_NAMES)
_SUCCEEDED_LINE = SplicedLine(_LOGGER, "info", "task_succeeded", _FIELD_NAMES)

_UUID_LENGTH = 36


def encode_identity(fields: dict[str, Any]) -> str | None:
    """``encode_fields`` of a task's identity (``fields``, from :func:`request_fields`; not
    consumed), made the cheap way when its ids are UUIDs or None and the rest plain strings,
    None and an int: the ids go on the line as they are, and the fields that repeat from task
    to task (name, queue, retries, worker) are encoded once. Encoding was the largest part of
    what a task's lifecycle lines cost."""
    splicing = id_splicing()
    if splicing is not None:
        is_uuid = splicing.is_uuid
        task_id, root_id = fields["task_id"], fields["root_id"]
        correlation_id, parent_id = fields["correlation_id"], fields["parent_id"]
        task_name, queue = fields["task_name"], fields["queue"]
        retries, worker = fields["retries"], fields["worker"]
        # Written out rather than a helper per field: this runs for every task. The types are
        # exact so that the repeated part's key determines its encoding.
        if (type(task_id) is str and len(task_id) == _UUID_LENGTH and is_uuid(task_id)
                and (root_id is None or (type(root_id) is str and (root_id == task_id or (
                    len(root_id) == _UUID_LENGTH and is_uuid(root_id)))))
                and (correlation_id is None or (
                    type(correlation_id) is str and len(correlation_id) == _UUID_LENGTH
                    and is_uuid(correlation_id)))
                and (parent_id is None or (
                    type(parent_id) is str and len(parent_id) == _UUID_LENGTH
                    and is_uuid(parent_id)))
                and type(retries) is int
                and (task_name is None or type(task_name) is str)
                and (queue is None or type(queue) is str)
                and (worker is None or type(worker) is str)):
            repeated = splicing.repeated(
                (task_name, queue, retries, worker),
                {"task_name": task_name, "queue": queue, "retries": retries, "worker": worker},
            )
            return ('"task_id": "' + task_id + '", ' + repeated + ', "correlation_id": '
                    + ("null" if correlation_id is None else '"' + correlation_id + '"')
                    + ', "parent_id": ' + ("null" if parent_id is None else '"' + parent_id + '"')
                    + ', "root_id": ' + ("null" if root_id is None else '"' + root_id + '"'))
    return encode_fields(dict(fields))


#: task id -> (identity, encoded) from its task_received line, for its task_started line
#: when both happen in this process (solo and thread pools). Bounded: a prefork parent
#: receives tasks its children start.
_received: dict[str, tuple[dict[str, Any], str]] = {}
_RECEIVED_KEPT = 256


def _on_received(request: Any = None, **_: Any) -> None:
    if request is None:
        return
    fields = request_fields(request, getattr(request, "name", None))
    encoded = encode_identity(fields)
    # Held: on the solo pool, task_started follows at once and carries it in its write.
    if encoded is None or not _RECEIVED_LINE.write(encoded, hold=True):
        emit(_LOGGER, "info", "task_received", fields)
        return
    if len(_received) >= _RECEIVED_KEPT:
        _received.clear()
    _received[str(fields["task_id"])] = (fields, encoded)


def _forget_received() -> None:
    # A prefork child is forked from the parent that logs every task_received and starts
    # none: its copy of those entries could be an earlier run of a task it now retries.
    _received.clear()


os.register_at_fork(after_in_child=_forget_received)


def _identity(task_id: str | None, task: Any,
              request: Any) -> tuple[dict[str, Any], str | None]:
    """The task's identity fields and their encoding: those of its task_received line when
    this process logged it (the same message, read a moment ago), else read afresh."""
    kept = _received.pop(task_id, None) if task_id is not None else None
    if (kept is not None and kept[0]["task_name"] == task.name
            and kept[0]["retries"] == _retries(request)):
        return kept
    fields = request_fields(request, task.name)
    return fields, encode_identity(fields)


def _on_prerun(task_id: str | None, task: Any, request: Any) -> None:
    bound_context.clear()
    fields, encoded = _identity(task_id, task, request)
    # The spliced line before the bookkeeping: its time is when the task starts (the
    # general way reads the identity from the context, so it comes after the binding).
    written = encoded is not None and _STARTED_LINE.write(encoded)
    bound_context.bind_identity(fields)
    run = run_signals.current(task_id)
    if run is not None:
        run.identity = encoded
    if not written:
        emit(_LOGGER, "info", "task_started", {})


def _on_postrun(task_id: str | None, task: Any, state: str | None) -> None:
    bound_context.clear()


def _runtime_ms(run: run_signals.Run) -> float:
    return round((time.monotonic() - run.started) * 1000, 3)


def _on_success(task_id: str | None, task: Any, request: Any) -> None:
    # task_success is sent on the thread that ran the task, between its task_prerun and
    # task_postrun: the current run is that task's (an eager task inside it has ended).
    run = run_signals.current(task_id)
    if run is None:
        emit(_LOGGER, "info", "task_succeeded", {"runtime_ms": None})
        return
    runtime_ms = _runtime_ms(run)
    # Held: it goes out with the next task's lines, or when the consumer loop turns.
    if run.identity is None or not _SUCCEEDED_LINE.write(
            run.identity, runtime_field(runtime_ms), hold=True):
        emit(_LOGGER, "info", "task_succeeded", {"runtime_ms": runtime_ms})


def runtime_field(runtime_ms: float) -> str:
    """The runtime as the JSON encoder writes it on a line (a finite float: its repr)."""
    return '"runtime_ms": ' + float.__repr__(runtime_ms)


def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    # ``reason`` is Celery's Retry; the exception that caused it is on its ``exc``.
    reason = getattr(reason, "exc", None) or reason
    logger.warning(
        "task_retried",
        exception_type=type(reason).__name__ if reason is not None else None,
        exception=str(reason) if reason is not None else None,
    )


def traceback_frames(tb: TracebackType | None) -> list[dict[str, Any]]:
    """A traceback as a list of frames: file, line, function and source line."""
    return [
        {"file": frame.filename, "line": frame.lineno, "function": frame.name,
         "code": frame.line}
        for frame in traceback.extract_tb(tb)
    ]


def _on_failure(
    task_id: str | None = None,
    exception: BaseException | None = None,
    traceback: TracebackType | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    tb = traceback
    if tb is None and exception is not None:
        tb = exception.__traceback__
    logger.error(
        "task_failed",
        exception_type=type(exception).__name__ if exception is not None else None,
        exception=str(exception) if exception is not None else None,
        traceback=traceback_frames(tb),
        runtime_ms=_runtime_ms(run) if (run := run_signals.current(task_id)) else None,
    )


def _log_rejected(sender: Any, message: Any, reason: str) -> None:
    message_headers = getattr(message, "headers", None) or {}
    delivery_info = getattr(message, "delivery_info", None) or {}
    logger.warning(
        "task_rejected",
        task_id=message_headers.get("id"),
        task_name=message_headers.get("task"),
        queue=delivery_info.get("routing_key"),
        retries=int(message_headers.get("retries") or 0),
        worker=getattr(sender, "hostname", None),
        correlation_id=message_headers.get(headers.CORRELATION_ID),
        parent_id=message_headers.get("parent_id"),
        root_id=message_headers.get("root_id"),
        reason=reason,
    )


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    # Celery sends task_rejected for a message it cannot read as a task (no task name, or an
    # invalid one such as a bad ETA); exc is None for the former.
    reason = str(exc) if exc is not None else "not a task message: it names no task"
    _log_rejected(sender, message, reason)


def _on_unknown(sender: Any = None, message: Any = None, name: Any = None, **_: Any) -> None:
    # A task name this worker does not know: Celery sends task_unknown instead of
    # task_rejected, but the message is rejected all the same (and its result marked failed).
    _log_rejected(sender, message, f"unregistered task {name!r}: no such task on this worker")


def _on_revoked(
    request: Any = None, terminated: bool = False, signum: Any = None, expired: bool = False,
    **_: Any,
) -> None:
    fields = request_fields(request, getattr(request, "name", None)) if request else {}
    logger.warning(
        "task_revoked", terminated=bool(terminated), expired=bool(expired),
        signal=str(signum) if signum is not None else None, **fields,
    )


_RECEIVERS: tuple[tuple[Any, Any], ...] = (
    (signals.task_received, _on_received),
    (signals.task_retry, _on_retry),
    (signals.task_failure, _on_failure),
    (signals.task_rejected, _on_rejected),
    (signals.task_unknown, _on_unknown),
    (signals.task_revoked, _on_revoked),
)


def install() -> None:
    """Connect the receivers; once per process, safe to call again."""
    run_signals.observe(run_signals.Stage.LINES, start=_on_prerun, success=_on_success,
                        end=_on_postrun)
    for signal, receiver in _RECEIVERS:
        signal.connect(
            receiver, weak=False, dispatch_uid=f"platform-tasks-log-{receiver.__name__}"
        )
