"""The workers' logs of a real run: JSON lines with task context, each event once, no secrets."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer

WELCOME = "platform_tasks.email.send_welcome_email"
PAYMENT = "platform_tasks.payments.process_payment"
CONTEXT_FIELDS = ("task_id", "task_name", "queue", "worker", "correlation_id")


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line the worker wrote, parsed; the process manager's ``--- `` lines skipped."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip() or line.startswith("--- "):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}: not a JSON line: {line!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def lines_of(path: Path, task_id: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The task's lines, once its task_succeeded line is there (it follows the stored result)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [r for r in json_lines(path) if r.get("task_id") == task_id]
        if any(r["event"] == "task_succeeded" for r in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def test_a_task_logs_json_lines_with_its_context_and_no_secrets(
    stack: DevStack, producer: TaskProducer
) -> None:
    correlation_id = f"req-{uuid.uuid4().hex[:12]}"
    address = f"newcomer-{uuid.uuid4().hex[:12]}@example.com"
    mail_id = producer.enqueue(
        WELCOME, queue="email", kwargs={"user_email": address}, correlation_id=correlation_id
    )
    key = f"order-{uuid.uuid4().hex[:12]}"
    pay_id = producer.enqueue(
        PAYMENT, queue="payments", correlation_id=correlation_id,
        kwargs={"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "amount": "5.00",
                "currency": "USD", "idempotency_key": key},
    )
    assert producer.wait(mail_id, timeout=60).state == "SUCCESS"
    assert producer.wait(pay_id, timeout=60).state == "SUCCESS"

    for task_id, name, queue in ((mail_id, WELCOME, "email"), (pay_id, PAYMENT, "payments")):
        mine = lines_of(stack.log_dir / f"worker-{queue}.log", task_id)
        events = [record["event"] for record in mine]
        assert events.count("task_succeeded") == 1, events
        assert events.count("task_started") == 1, events
        assert events.count("task_received") == 1, events
        for record in mine:
            for field in CONTEXT_FIELDS:
                assert record.get(field), (field, record)
            assert record["task_name"] == name
            assert record["queue"] == queue
            assert record["correlation_id"] == correlation_id
            assert record["worker"].startswith(f"{queue}@")
        succeeded = next(r for r in mine if r["event"] == "task_succeeded")
        assert succeeded["runtime_ms"] >= 0
        assert succeeded["level"] == "info"
        assert "parent_id" in succeeded
        assert "root_id" in succeeded

    secrets = {
        stack.env["PLATFORM_TASKS_REDIS_PASSWORD"],
        stack.env["PLATFORM_TASKS_SENTINEL_PASSWORD"],
        address,
    }
    logs = sorted(stack.log_dir.rglob("*"))
    assert logs
    for path in logs:
        if path.is_file():
            text = path.read_text(errors="replace")
            for secret in secrets:
                assert secret not in text, f"{path.name} contains a secret or the recipient"
