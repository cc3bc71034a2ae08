"""structlog's context-local variables, read and cleared without walking every context var.

``structlog.contextvars.merge_contextvars`` and ``clear_contextvars`` copy the whole context
and test the name of every context variable in it (Celery's, kombu's, redis-py's…), on every
log line and twice per task. structlog keeps its own variables in one registry
(``structlog.contextvars._CONTEXT_VARS``); reading that is the same result for a fraction of
the cost. Should a structlog release drop the registry, structlog's own functions are used.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog.contextvars as structlog_contextvars

_PREFIX = structlog_contextvars.STRUCTLOG_KEY_PREFIX
_REGISTRY: dict[str, ContextVar[Any]] | None = getattr(
    structlog_contextvars, "_CONTEXT_VARS", None
)


def merge(logger: Any, method_name: str,
          event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The processor: what ``bind_contextvars`` bound in this context, under the line's own
    keys (a key the line sets itself wins)."""
    if _REGISTRY is None:
        return structlog_contextvars.merge_contextvars(logger, method_name, event_dict)
    for name, variable in list(_REGISTRY.items()):
        value = variable.get(Ellipsis)
        if value is not Ellipsis:
            event_dict.setdefault(name[len(_PREFIX):], value)
    return event_dict


def names() -> set[str]:
    """The keys bound in this context right now."""
    if _REGISTRY is None:
        return set(structlog_contextvars.get_contextvars())
    return {name[len(_PREFIX):] for name, variable in list(_REGISTRY.items())
            if variable.get(Ellipsis) is not Ellipsis}


_only_cache: dict[frozenset[str], tuple[int, bool]] = {}


def bound_only(allowed: frozenset[str]) -> bool:
    """Whether nothing but keys in ``allowed`` is bound in this context.

    structlog creates a variable per key the first time any code binds it; while every
    variable it ever created is for an allowed key, the answer is yes without reading them.
    """
    if _REGISTRY is None:
        return not (names() - allowed)
    size = len(_REGISTRY)
    cached = _only_cache.get(allowed)
    if cached is None or cached[0] != size:
        prefix_length = len(_PREFIX)
        cached = (size, all(name[prefix_length:] in allowed for name in list(_REGISTRY)))
        _only_cache[allowed] = cached
    return cached[1] or not (names() - allowed)


def clear() -> None:
    """Unbind everything ``bind_contextvars`` bound in this context."""
    if _REGISTRY is None:
        structlog_contextvars.clear_contextvars()
        return
    for variable in list(_REGISTRY.values()):
        if variable.get(Ellipsis) is not Ellipsis:
            variable.set(Ellipsis)
