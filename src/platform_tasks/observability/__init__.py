"""Logs (structlog, one JSON object per line) with task context, and redaction."""

from platform_tasks.observability.logging import configure_logging

__all__ = ["configure_logging"]
