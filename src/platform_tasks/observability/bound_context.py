"""What a log line inherits from its context: the running task's identity, and whatever code
bound with ``structlog.contextvars``.

The identity is one context variable holding one dict, set when a task starts and unset
when it ends: binding its eight fields with ``bind_contextvars`` set eight variables, and
unbinding them walked every variable structlog ever created, twice per task. What code binds
itself (``structlog.contextvars.bind_contextvars(order=…)``) stays in structlog's own
variables, read here from structlog's registry (``structlog.contextvars._CONTEXT_VARS``)
instead of copying the whole context and testing the name of every variable in it
(Celery's, kombu's, redis-py's…) on every line. Should a structlog release drop the
registry, structlog's own functions are used.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog.contextvars as structlog_contextvars

_PREFIX = structlog_contextvars.STRUCTLOG_KEY_PREFIX
_REGISTRY: dict[str, ContextVar[Any]] | None = getattr(
    structlog_contextvars, "_CONTEXT_VARS", None
)

#: The running task's identity fields, or None outside a task.
_identity: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "platform_tasks_task_identity", default=None
)


def bind_identity(fields: Mapping[str, Any]) -> None:
    """Put ``fields`` (not copied: the caller keeps it unchanged) on every line logged in
    this context until :func:`clear`."""
    _identity.set(fields)


def _bound_by_code() -> dict[str, Any]:
    """What ``bind_contextvars`` bound in this context, by key."""
    if _REGISTRY is None:
        return structlog_contextvars.get_contextvars()
    bound: dict[str, Any] = {}
    prefix_length = len(_PREFIX)
    for name, variable in list(_REGISTRY.items()):
        value = variable.get(Ellipsis)
        if value is not Ellipsis:
            bound[name[prefix_length:]] = value
    return bound


def merge(logger: Any, method_name: str,
          event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The processor: the identity, then what code bound, under the line's own keys (a key
    the line sets itself wins; a key code bound wins over the identity's)."""
    identity = _identity.get()
    bound = _bound_by_code() if _REGISTRY is None or _REGISTRY else {}
    if identity is None:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
        return event_dict
    for key, value in identity.items():
        event_dict.setdefault(key, bound.pop(key, value))
    for key, value in bound.items():
        event_dict.setdefault(key, value)
    return event_dict


def names() -> set[str]:
    """The keys bound in this context right now."""
    identity = _identity.get()
    return set(_bound_by_code()) | (set(identity) if identity is not None else set())


def bound_by_code_only(allowed: frozenset[str]) -> bool:
    """Whether code bound nothing in this context but keys in ``allowed``.

    structlog creates a variable per key the first time any code binds it; while it never
    created one, or only for allowed keys, the answer is yes without reading them.
    """
    if _REGISTRY is None:
        return not (set(structlog_contextvars.get_contextvars()) - allowed)
    if not _REGISTRY:
        return True
    size = len(_REGISTRY)
    cached = _only_cache.get(allowed)
    if cached is None or cached[0] != size:
        prefix_length = len(_PREFIX)
        cached = (size, all(name[prefix_length:] in allowed for name in list(_REGISTRY)))
        _only_cache[allowed] = cached
    return cached[1] or not (set(_bound_by_code()) - allowed)


_only_cache: dict[frozenset[str], tuple[int, bool]] = {}


def clear() -> None:
    """Unbind the identity and everything ``bind_contextvars`` bound in this context."""
    _identity.set(None)
    if _REGISTRY is None:
        structlog_contextvars.clear_contextvars()
        return
    if not _REGISTRY:
        return
    for variable in list(_REGISTRY.values()):
        if variable.get(Ellipsis) is not Ellipsis:
            variable.set(Ellipsis)
