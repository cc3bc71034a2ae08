"""A service that embeds the producer decides what it logs.

Without logging configured, enqueueing prints nothing: structlog's unconfigured defaults
would print a plain-text debug line per enqueue on the service's stdout. With the platform's
pipeline configured at DEBUG, the same calls log their JSON ``task_enqueued`` and
``tasks_enqueued`` lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SERVICE = textwrap.dedent("""
    import sys
    from platform_tasks.producer import TaskProducer
    from platform_tasks.settings import load_settings

    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": sys.argv[1],
                              "PLATFORM_TASKS_LOG_LEVEL": "DEBUG"})
    if sys.argv[2] == "configured":
        from platform_tasks.observability.logging import configure_logging
        configure_logging(settings, process="producer")
    with TaskProducer(settings) as producer:
        task_id = producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                                   args=[1, 2])
        producer.enqueue_many("platform_tasks.default.add_numbers", [([3, 4], None)],
                              queue="default")
    print("ENQUEUED", task_id, file=sys.stderr)
""")


def run_service(redis_url: str, mode: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", SERVICE, redis_url, mode],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "ENQUEUED" in result.stderr
    return result


def test_without_logging_configured_enqueueing_prints_nothing(redis_url: str) -> None:
    result = run_service(redis_url, "unconfigured")
    assert result.stdout == ""


def test_with_the_pipeline_configured_the_enqueue_lines_are_json(redis_url: str) -> None:
    result = run_service(redis_url, "configured")
    task_id = result.stderr.split("ENQUEUED", 1)[1].split()[0]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = {line["event"]: line for line in lines}
    assert events["task_enqueued"]["task_id"] == task_id
    assert events["task_enqueued"]["level"] == "debug"
    assert events["tasks_enqueued"]["count"] == 1
