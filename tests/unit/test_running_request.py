"""The request a receiver shares with the next is only ever its own task's, on its thread."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from platform_tasks.observability import running_request


def test_a_remembered_request_serves_its_task_on_its_thread_only() -> None:
    task = SimpleNamespace(request="read from celery")
    running_request.remember("t-1", "remembered")
    assert running_request.of("t-1", task) == "remembered"
    assert running_request.of("t-2", task) == "read from celery"  # another task: read afresh

    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(running_request.of("t-1", task)))
    thread.start()
    thread.join()
    assert seen == ["read from celery"]  # another thread does not see this one's
