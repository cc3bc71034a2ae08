"""Scenario 11: what no producer should send, pushed straight onto the queues under a steady
load: garbage bytes, a foreign content type, an unknown task name, a pickle payload.

Each must end in the dead-letter list, the workers must stay up, and the steady load must not
notice. Garbage has no task id a worker could read, so each item carries a marker (recorded
in the ledger as its id) that its dead letter is found by.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from cluster import Cluster
from load import publish_raw
from scenario import ScenarioFactory, assert_kept_promise

pytestmark = pytest.mark.integration

GARBAGE = "garbage"


def envelope(task_id: str, task: str, body: bytes, content_type: str, queue: str) -> str:
    """A message as kombu lays it on a queue list, with any body and content type."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8" if content_type != "application/x-python-serialize"
        else "binary",
        "content-type": content_type,
        "headers": {"id": task_id, "task": task, "lang": "py", "retries": 0},
        "properties": {
            "delivery_tag": str(uuid.uuid4()), "body_encoding": "base64", "priority": 0,
            "delivery_info": {"exchange": queue, "routing_key": queue},
        },
    })


def garbage_items(queue: str) -> dict[str, str]:
    """Marker -> the raw item to push onto ``queue``."""
    items: dict[str, str] = {}
    marker = f"bytes-{uuid.uuid4()}"
    items[marker] = f"\x00\xff not a message at all {marker}"
    marker = f"yaml-{uuid.uuid4()}"
    items[marker] = envelope(marker, "reliability.apply_effect", f"key: {marker}\n".encode(),
                             "application/x-yaml", queue)
    marker = f"pickle-{uuid.uuid4()}"
    # A pickle that would call os.system if anything unpickled it: nothing may.
    items[marker] = envelope(marker, "reliability.apply_effect",
                             b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c"
                             b"\x06system\x93\x8c\x04true\x85R.",
                             "application/x-python-serialize", queue)
    return items


def test_11_garbage_and_foreign_messages_on_the_queues(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("11 garbage, foreign, unknown, pickle messages", cluster)
    workers = cluster.start_workers("default", "email", "payments")
    producer = run.producer()

    with run.load(rate=20), cluster.broker() as broker:
        time.sleep(2.0)
        for queue in ("default", "email"):
            for marker, item in garbage_items(queue).items():
                cluster.ledger.attempted(marker, queue=queue, kind=GARBAGE)
                broker.lpush(queue, item)
                cluster.ledger.acknowledged(marker, marker)
            # A well-formed message naming a task no worker has.
            unknown = str(uuid.uuid4())
            cluster.ledger.attempted(unknown, queue=queue, kind=GARBAGE)
            publish_raw(producer.app, "reliability.no_such_task", queue=queue,
                        task_id=unknown, args=[unknown])
            cluster.ledger.acknowledged(unknown, unknown)
            run.note(f"pushed 4 garbage items onto {queue}")
            time.sleep(2.0)
        time.sleep(2.0)

    counts = run.finish(dead_letter_kinds={GARBAGE}, drain_timeout=30)
    assert_kept_promise(counts, run)
    assert counts.dead_lettered == 8, "every garbage item must be kept as a dead letter"
    assert all(process.alive for process in workers)
