"""One log pipeline per process: structlog events and stdlib records, one JSON object per line.

:func:`configure_logging` gives the root logger a single handler whose formatter runs the
same structlog processors over Celery's, kombu's and redis' stdlib records as over the
platform's own events, so every line has the same keys and passes the same redaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from platform_tasks.json_encoding import reusable_encoder
from platform_tasks.observability import bound_context, held_lines
from platform_tasks.observability.redaction import Redactor, is_secret_key
from platform_tasks.settings import LogFormat, LogLevel, Settings

#: Marks the handler this module installs, so a second call replaces it instead of adding one.
_HANDLER_NAME = "platform-tasks"

#: Loggers too chatty at INFO: Celery's strategy says what task_received says, its tracer what
#: task_succeeded/task_retried say (and builds each line with reprs of the arguments before our
#: filter could drop it: a cost on every task), aiosmtpd (the dev stack's SMTP sink) logs
#: every connection. Their warnings and errors still come through.
_QUIET_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "mail.log")

_process_name = "platform-tasks"
#: The last call's arguments, for a child process that finds its handler gone.
_last_call: dict[str, Any] = {}


#: Celery's own line for a revoked task it discards; a header-revoked one has a suffix.
_DISCARDING_REVOKED = "Discarding revoked task: %s[%s]"


def _celery_task_lines() -> dict[str, frozenset[str]]:
    """Logger name -> the message templates of Celery's that say what one of our events says."""
    from celery.app import trace
    from celery.worker.consumer import consumer

    by_logger = {
        "celery.app.trace": (
            trace.LOG_RECEIVED,
            trace.LOG_SUCCESS,
            trace.LOG_FAILURE,
            trace.LOG_IGNORED,
            trace.LOG_REJECTED,
            trace.LOG_RETRY,
        ),
        # task_rejected: an unregistered task, an invalid or an unknown message. Celery's
        # lines also dump the message body and a traceback of its own lookup.
        "celery.worker.consumer.consumer": (
            consumer.UNKNOWN_TASK_ERROR,
            consumer.INVALID_TASK_ERROR,
            consumer.UNKNOWN_FORMAT,
        ),
        # task_revoked
        "celery.worker.request": (_DISCARDING_REVOKED,),
    }
    return {
        name: frozenset(template.strip() for template in templates)
        for name, templates in by_logger.items()
    }


class _DropCeleryTaskLines(logging.Filter):
    """Drops ``Task x[id] succeeded in …`` and its siblings: logged once, as our events."""

    def __init__(self, lines: frozenset[str]) -> None:
        super().__init__()
        self._lines = lines

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        message = record.msg.strip()
        return not (
            message in self._lines
            or (_DISCARDING_REVOKED in self._lines and message.startswith(_DISCARDING_REVOKED))
        )


#: structlog's method names that are not level names.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}


class _UtcClock:
    """ISO 8601 UTC timestamps with microseconds, formatting the date and time once a second.

    ``datetime.now(UTC).isoformat()`` costs about a microsecond per line; most of that is the
    part that only changes once a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        # Integer microseconds since the epoch: their last six digits are the fraction,
        # zero-padded already (half the cost of formatting a float).
        micros = time.time_ns() // 1000
        second = micros // 1_000_000
        if second != self._second:
            # The prefix before the second, each in one store: a signal handler or another
            # thread may log between any two steps here, and must not pair a new second
            # with an old prefix.
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        return self._prefix + str(micros)[-6:] + "Z"


def _stamp(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Level, logger name, timestamp, process name and pid, in one pass per line.

    The same fields structlog's ``add_log_level``, ``add_logger_name`` and ``TimeStamper``
    write, for the platform's events and stdlib records alike (a record's logger name comes
    from the record).
    """
    event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
    record = event_dict.get("_record")
    event_dict["logger"] = record.name if record is not None else logger.name
    event_dict["timestamp"] = _clock.now()
    # The pid is read per line: prefork children share the parent's configuration.
    event_dict.setdefault("process", _process_name)
    event_dict.setdefault("pid", os.getpid())
    return event_dict


_clock = _UtcClock()


def _fallback(value: Any) -> str:
    # What the redactor left as an object (it turns unknown objects into strings already).
    return str(value)


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_fallback)


def _render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _ENCODER.encode(event_dict)


def _secrets(settings: Settings | None) -> list[str]:
    if settings is None:
        return []
    found = [
        secret.get_secret_value()
        for secret in (settings.redis_password, settings.sentinel_password, settings.smtp_password)
        if secret is not None
    ]
    if settings.redis_url:
        from urllib.parse import unquote, urlsplit

        password = urlsplit(settings.redis_url).password
        if password:
            found.append(unquote(password))
    return found


def build_processors(
    settings: Settings | None, log_format: LogFormat
) -> tuple[list[Processor], list[Processor]]:
    """The shared pre-chain and the final chain (exception formatting, redaction, renderer)."""
    shared: list[Processor] = [bound_context.merge, _stamp]
    renderer: Processor
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if log_format == "console":
        final.append(Redactor(_secrets(settings)))
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        final.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        final.append(Redactor(_secrets(settings)))
        renderer = _render_json
    final.append(renderer)
    return shared, final


_ATOMIC_WRITE_BYTES = held_lines.ATOMIC_WRITE_BYTES


def _file_descriptor(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None  # a StringIO, a closed or detached stream


class _LineWriter:
    """structlog's output end: writes each rendered line to the handler's stream.

    A line that fits in one atomic write goes to the stream's file descriptor in a single
    ``os.write``, with no Python lock held: under a thread pool, a lock held across the
    system call made the threads queue behind each other and the GIL (twice the drain time
    on the email queue's pool). Longer lines, and streams without a descriptor, take the
    stdlib handler's lock, so they never interleave with a stdlib record of another thread.
    With holding on (:mod:`held_lines`), a line may share its write with the next ones.
    It has the ``name`` that ``add_logger_name`` reads.
    """

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self._handler = handler
        #: The stream's file descriptor; None for a stream without one.
        self.fd = _file_descriptor(handler.stream)
        self.encoding = getattr(handler.stream, "encoding", None) or "utf-8"
        self.name = name

    def msg(self, message: str) -> None:
        self.write_line(message, hold=False)

    def write_line(self, message: str, *, hold: bool) -> None:
        """Write ``message`` as one line; with ``hold`` (and holding on) perhaps later."""
        if self.fd is not None:
            data = (message + "\n").encode(self.encoding, "backslashreplace")
            if len(data) <= _ATOMIC_WRITE_BYTES:
                if held_lines.HELD.enabled:
                    for chunk in held_lines.HELD.take(self.fd, data, hold):
                        self.write_bytes(chunk)
                    return
                self.write_bytes(data)
                return
            held_lines.flush()
        self._handler.acquire()
        try:
            self._handler.stream.write(message + "\n")
            self._handler.flush()
        except Exception:
            self._handler.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            self._handler.release()

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` (whole lines, at most ``PIPE_BUF`` bytes) to the descriptor."""
        assert self.fd is not None
        try:
            written = os.write(self.fd, data)
        except OSError:
            written = 0
        if written == len(data):
            return
        # A partial or failed write (a full disk, a signal): finish it under the lock, and
        # report what cannot be written through the handler.
        self._finish(data[written:])

    def _finish(self, rest: bytes) -> None:
        assert self.fd is not None
        self._handler.acquire()
        try:
            while rest:
                rest = rest[os.write(self.fd, rest):]
        except OSError:
            self._handler.handleError(logging.makeLogRecord({"msg": rest.decode(
                self.encoding, "replace")}))
        finally:
            self._handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineWriterFactory:
    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler
        self._writers: dict[str, _LineWriter] = {}

    def __call__(self, *args: Any) -> _LineWriter:
        name = str(args[0]) if args else ""
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = _LineWriter(self._handler, name)
        return writer


class _Handler(logging.StreamHandler[TextIO]):
    """The root handler: held lifecycle lines (:mod:`held_lines`) go out before a stdlib
    record, and with every flush (``logging.shutdown`` at exit included)."""

    def emit(self, record: logging.LogRecord) -> None:
        held_lines.flush()
        super().emit(record)

    def flush(self) -> None:
        held_lines.flush()
        super().flush()


@dataclass(frozen=True, slots=True)
class _Pipeline:
    """What :func:`emit` needs from the last :func:`configure_logging` call."""

    level: int
    processors: tuple[Processor, ...]
    writers: _LineWriterFactory
    #: The JSON pipeline's redactor; None for the console renderer (no fragments there).
    redactor: Redactor | None = None
    #: (key, value) -> the field as redacted and encoded on a line, for repeated values.
    fragments: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Caller's key -> fields encoded once (:meth:`IdSplicing.repeated`).
    repeated: dict[tuple[Any, ...], str] = field(default_factory=dict)


_pipeline: _Pipeline | None = None
_LEVELS = logging.getLevelNamesMapping()


def emit(logger_name: str, method: str, event: str, fields: dict[str, Any]) -> None:
    """Log one of the platform's own events (``method``: info, warning…) through the pipeline.

    The same processors and output as ``structlog.get_logger(logger_name).<method>(event,
    **fields)`` without the bound-logger layers: the lifecycle events are logged for every
    task, and the one logged in the prefork parent (task_received) is on the path every
    message takes. ``fields`` is consumed.
    """
    pipeline = _pipeline
    if pipeline is None:
        structlog.get_logger(logger_name).log(_LEVELS[method.upper()], event, **fields)
        return
    if _LEVELS[method.upper()] < pipeline.level:
        return
    writer = pipeline.writers(logger_name)
    fields["event"] = event
    rendered: Any = fields
    for processor in pipeline.processors:
        rendered = processor(writer, method, rendered)
    writer.msg(rendered)


def encode_fields(fields: dict[str, Any]) -> str | None:
    """``fields`` redacted and JSON-encoded as they appear inside a line (no braces), for
    :class:`SplicedLine`; None when lines are not JSON (the console renderer).

    A task's identity goes on each of its lifecycle lines: redacting and encoding it once per
    task instead of once per line is most of what those lines cost. ``fields`` is consumed.
    """
    pipeline = _pipeline
    if pipeline is None or pipeline.redactor is None or pipeline.level > logging.INFO:
        return None
    return _encode_for(pipeline, pipeline.redactor, fields)


def _encode_for(pipeline: _Pipeline, redactor: Redactor, fields: dict[str, Any]) -> str:
    plain = _encode_plain_fields(redactor, pipeline.fragments, fields)
    if plain is not None:
        return plain
    return _encode_flat(redactor(None, "info", fields))[1:-1]


class IdSplicing:
    """How one JSON pipeline lets a caller splice ids into its lines as they are: its test for
    a UUID it writes unchanged (in a field whose name is not a secret's), and the encodings
    of fields that repeat from line to line, made once. Taken from :func:`id_splicing`, so
    that both come from the same pipeline even if logging is configured again meanwhile."""

    __slots__ = ("_pipeline", "_redactor", "is_uuid")

    def __init__(self, pipeline: _Pipeline, redactor: Redactor,
                 is_uuid: Callable[[str], object]) -> None:
        self._pipeline = pipeline
        self._redactor = redactor
        self.is_uuid = is_uuid

    def repeated(self, key: tuple[Any, ...], fields: dict[str, Any]) -> str:
        """What :func:`encode_fields` makes of ``fields``, remembered under ``key``, which must
        determine them, types included (``1`` and ``True`` are equal keys but encode apart).
        ``fields`` is not consumed."""
        remembered = self._pipeline.repeated
        encoded = remembered.get(key)
        if encoded is None:
            encoded = _encode_for(self._pipeline, self._redactor, dict(fields))
            if len(remembered) >= _FRAGMENTS_KEPT:
                remembered.clear()
            remembered[key] = encoded
        return encoded


_id_splicing: IdSplicing | None = None


def id_splicing() -> IdSplicing | None:
    """The current pipeline's :class:`IdSplicing`; None when lines are not JSON at INFO, or
    when a configured secret could hide inside a UUID (ids then take the general way)."""
    global _id_splicing
    pipeline = _pipeline
    if pipeline is None or pipeline.redactor is None or pipeline.level > logging.INFO:
        return None
    splicing = _id_splicing
    if splicing is not None and splicing._pipeline is pipeline:
        return splicing
    is_uuid = pipeline.redactor.untouched_uuid_test()
    if is_uuid is None:
        return None
    splicing = _id_splicing = IdSplicing(pipeline, pipeline.redactor, is_uuid)
    return splicing


_UUID_LENGTH = 36
#: Fragments remembered per pipeline: names, queues and the worker repeat on every task.
_FRAGMENTS_KEPT = 4096
_FRAGMENT_LENGTH = 256
_encoded_keys: dict[str, str] = {}


def _encoded_key(key: str) -> str:
    encoded = _encoded_keys.get(key)
    if encoded is None:
        encoded = _encoded_keys[key] = encode_basestring_ascii(key) + ": "
    return encoded


def _encode_plain_fields(redactor: Redactor, fragments: dict[tuple[str, str], str],
                         fields: dict[str, Any]) -> str | None:
    """What the redactor and the encoder make of ``fields`` (no braces), when every value is
    a string, an int or None; None otherwise (the caller takes the general way).

    Field by field instead of a pass over the whole dict: the ids (UUIDs) go through as they
    are, everything else is looked up from the fragments made before.
    """
    is_uuid = redactor.untouched_uuid_test()
    parts = []
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            if (is_uuid is not None and len(value) == _UUID_LENGTH and is_uuid(value)
                    and not is_secret_key(key)):
                parts.append(_encoded_key(key) + '"' + value + '"')
                continue
            part = fragments.get((key, value))
            if part is None:
                part = _encoded_key(key) + encode_basestring_ascii(
                    redactor.string_field(key, value))
                if len(value) <= _FRAGMENT_LENGTH:
                    if len(fragments) >= _FRAGMENTS_KEPT:
                        fragments.clear()
                    fragments[(key, value)] = part
            parts.append(part)
        elif value is None:
            parts.append(_encoded_key(key) + "null")
        elif kind is int:
            parts.append(_encoded_key(key) + int.__repr__(value))
        else:
            return None
    return ", ".join(parts)


_NOTHING: frozenset[str] = frozenset()


class SplicedLine:
    """One event's line written from fields :func:`encode_fields` encoded once (a task's
    identity, on each of its lifecycle lines), plus ``extra`` encoded by the caller, bound
    context included: the bytes :func:`emit` writes for the same event and fields.

    Only when that is all the line would hold: if code bound anything else in the context
    (the task bound its own fields; for a line whose fields are the bound identity, anything
    at all), nothing is written and :meth:`write` returns False, so the caller takes
    :func:`emit`. Same keys, same order, same bytes: ``fields_first`` when :func:`emit` is
    given the fields themselves (they come before the event), not a bound context.

    Kept by its caller, which writes it for every task: the line's constant pieces, its
    writer and its level are looked up once per pipeline, and the usual case (holding on,
    the line short enough to share a write) is written out in one function. In a worker,
    where a task's lines run with caches cold, the number of small steps a line takes is
    most of its cost.
    """

    __slots__ = ("_allowed", "_event", "_fields_first", "_logger_name", "_method", "_shape")

    def __init__(self, logger_name: str, method: str, event: str, names: frozenset[str], *,
                 fields_first: bool = False) -> None:
        self._logger_name = logger_name
        self._method = method
        self._event = event
        self._fields_first = fields_first
        # The fields of a received line are its own and win over the context; those of the
        # other lines are the bound identity, which any key code bound would override.
        self._allowed = names if fields_first else _NOTHING
        self._shape: _LineShape | None = None

    def write(self, encoded: str, extra: str = "", *, hold: bool = False) -> bool:
        """Write the line with ``encoded`` fields and ``extra`` (fields already encoded as
        JSON writes them, without braces; they go first). ``hold``: the line may wait to
        share a write with the next one (:mod:`held_lines`). False when nothing was written
        because the line would hold more than that."""
        pipeline = _pipeline
        shape = self._shape
        if shape is None or shape.pipeline is not pipeline:
            if pipeline is None:
                return False  # not configured: structlog's own defaults, through emit()
            shape = self._shape = _shape(pipeline, self._logger_name, self._method,
                                         self._event, self._fields_first)
        if shape.level < pipeline.level:
            return True
        if not bound_context.bound_by_code_only(self._allowed):
            return False
        if extra:
            extra += ", "
        # One f-string: the line is built in one allocation, not one per piece.
        if self._fields_first:
            text = f"{{{extra}{encoded}{shape.event_part}{shape.tail}{_clock.now()}{_pid_end}\n"
        else:
            text = f"{{{extra}{shape.event_part}{encoded}{shape.tail}{_clock.now()}{_pid_end}\n"
        writer = shape.writer
        fd = writer.fd
        if fd is not None and held_lines.HELD.enabled:
            data = text.encode(writer.encoding, "backslashreplace")
            out = held_lines.HELD.add(fd, data, hold)
            if out is None:
                return True  # held
            if out:
                writer.write_bytes(out)
                return True
        writer.write_line(text[:-1], hold=hold)
        return True


#: The JSON encoder of :data:`_ENCODER`, made once (it encodes flat dicts of plain values).
_encode_flat = reusable_encoder(_fallback)


@dataclass(frozen=True, slots=True)
class _LineShape:
    """The constant pieces of a spliced line for one event under one pipeline."""

    pipeline: _Pipeline
    level: int
    writer: _LineWriter
    event_part: str
    #: What follows the fields, up to the timestamp's value.
    tail: str


def _shape(pipeline: _Pipeline, logger_name: str, method: str, event: str,
           fields_first: bool) -> _LineShape:
    encoded_event = _ENCODER.encode(event)
    event_part = (', "event": ' + encoded_event if fields_first
                  else '"event": ' + encoded_event + ", ")
    tail = (', "level": "' + _LEVEL_OF_METHOD.get(method, method) + '", "logger": '
            + _ENCODER.encode(logger_name) + ', "timestamp": "')
    return _LineShape(pipeline, _LEVELS[method.upper()], pipeline.writers(logger_name),
                      event_part, tail)


#: What follows the timestamp's value: the process name and the pid, encoded once per
#: process (a prefork child shares its parent's configuration: set again after a fork).
_pid_end = ""


def _set_pid_end() -> None:
    global _pid_end
    _pid_end = (f'", "process": {_ENCODER.encode(_process_name)}, '
                f'"pid": {os.getpid()}}}')


os.register_at_fork(after_in_child=_set_pid_end)


def configure_logging(
    settings: Settings | None,
    *,
    process: str,
    stream: TextIO | None = None,
    level: LogLevel | None = None,
    log_format: LogFormat | None = None,
) -> None:
    """Send every log line of this process through structlog to ``stream`` (stdout).

    ``settings`` gives the level, the format and the secrets to redact; without settings
    (``platform-tasks dev``) the defaults are INFO and the console renderer. Safe to call
    again: the previous handler is replaced, never duplicated.
    """
    global _process_name  # one pipeline per process; the name goes on every line
    _process_name = process
    _set_pid_end()
    _last_call.update(
        settings=settings, process=process, stream=stream, level=level, log_format=log_format
    )
    chosen_level: str = level or (settings.log_level if settings else "INFO")
    chosen_format: LogFormat = log_format or (settings.log_format if settings else "console")
    shared, final = build_processors(settings, chosen_format)

    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = _Handler(stream if stream is not None else sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    # The platform's own events skip the stdlib round trip (a LogRecord, the handler chain,
    # the formatter's re-entry into structlog): same processors, same stream, same lock, at
    # less than half the cost per line, and nothing at all below the level.
    global _pipeline
    processors = [*shared, *final[1:]]
    writers = _LineWriterFactory(handler)
    structlog.configure(
        processors=processors,
        logger_factory=writers,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[chosen_level]),
        cache_logger_on_first_use=True,
    )
    json_redactor = None
    if chosen_format == "json":
        json_redactor = next(item for item in final if isinstance(item, Redactor))
    _pipeline = _Pipeline(_LEVELS[chosen_level], tuple(processors), writers, json_redactor)

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(chosen_level)
    # Python warnings (Celery's SecurityWarning, deprecations) become log records too,
    # instead of plain text on stderr between the JSON lines.
    logging.captureWarnings(True)
    # Celery's own loggers must not print on their own: everything propagates to the root.
    for name in ("celery", "celery.task", "celery.redirected", "kombu", "redis", "amqp"):
        logger = logging.getLogger(name)
        for existing in list(logger.handlers):
            logger.removeHandler(existing)
        logger.propagate = True
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, lines in _celery_task_lines().items():
        celery_logger = logging.getLogger(name)
        if not any(isinstance(item, _DropCeleryTaskLines) for item in celery_logger.filters):
            celery_logger.addFilter(_DropCeleryTaskLines(lines))
    logging.captureWarnings(True)
    _install_celery_hooks()


def _keep_our_logging(**_: Any) -> None:
    """A receiver on ``setup_logging``: its presence makes Celery skip its own set-up.

    Prefork children call Celery's set-up again after the fork; they inherited the
    root handler, so there is nothing to do.
    """


def route_worker_messages() -> None:
    """Send the worker's shutdown messages (``worker: Warm shutdown``) through the logs.

    Celery writes them straight to the stdout file descriptor, around any logging set-up,
    which would put plain-text lines between the JSON ones.
    """
    from celery.apps import worker as celery_worker

    def _say(msg: Any, f: Any = None) -> None:
        # Called from Celery's signal handlers: going through logging there could deadlock on
        # a handler lock the interrupted code holds, so one JSON line is written directly.
        line = json.dumps({
            "event": str(msg).strip(),
            "level": "warning",
            "logger": "celery.apps.worker",
            "timestamp": datetime.now(UTC).isoformat(),
            "pid": os.getpid(),
        })
        with contextlib.suppress(OSError):
            os.write(1, line.encode() + b"\n")

    if hasattr(celery_worker, "safe_say"):
        celery_worker.safe_say = _say


def _check_child(**_: Any) -> None:
    """``worker_process_init``: a prefork child keeps the handler it inherited by fork.

    Should anything have removed it (a pool that spawns instead of forking), it is put back.
    """
    if _last_call and not any(
        handler.get_name() == _HANDLER_NAME for handler in logging.getLogger().handlers
    ):
        configure_logging(**_last_call)


def _install_celery_hooks() -> None:
    from celery.signals import setup_logging, worker_process_init

    setup_logging.connect(_keep_our_logging, weak=False, dispatch_uid="platform-tasks-logging")
    worker_process_init.connect(
        _check_child, weak=False, dispatch_uid="platform-tasks-logging-child"
    )
