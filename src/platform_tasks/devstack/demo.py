"""The demo ``platform-tasks dev`` runs: one task of each kind, the canvases and a revoke,
with every state change printed as the result backend reports it."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from celery import chain, chord, group
from PIL import Image, ImageDraw

from platform_tasks import contracts
from platform_tasks.producer import TaskProducer, TaskStatus
from platform_tasks.queues import QueueName
from platform_tasks.settings import Settings

ADD_NUMBERS = contracts.ADD_NUMBERS.name
SUM_NUMBERS = contracts.SUM_NUMBERS.name
SEND_WELCOME_EMAIL = contracts.SEND_WELCOME_EMAIL.name
PROCESS_PAYMENT = contracts.PROCESS_PAYMENT.name
MAKE_THUMBNAIL = contracts.MAKE_THUMBNAIL.name
DEFAULT = str(QueueName.DEFAULT)
EMAIL = str(QueueName.EMAIL)
PAYMENTS = str(QueueName.PAYMENTS)
MEDIA = str(QueueName.MEDIA)

SAMPLE_IMAGE = "demo/sample.png"
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


@dataclass
class _Tracked:
    label: str
    task_id: str
    expected_state: str = "SUCCESS"
    expected_result: Callable[[Any], bool] = field(default=lambda _result: True)
    # The backend says PENDING for a task it has no record of yet, so every task starts there.
    state: str = "PENDING"
    last: TaskStatus | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def as_expected(self) -> bool:
        return (
            self.last is not None
            and self.state == self.expected_state
            and (self.state != "SUCCESS" or self.expected_result(self.last.result))
        )


def _equals(expected: Any) -> Callable[[Any], bool]:
    return lambda result: bool(result == expected)


def _stamp() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]


def write_sample_image(media_root: Path) -> Path:
    """A small gradient PNG for the thumbnail task to shrink."""
    path = media_root / SAMPLE_IMAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (640, 480))
    draw = ImageDraw.Draw(image)
    for x in range(0, 640, 8):
        draw.rectangle((x, 0, x + 7, 479), fill=(x * 255 // 640, 96, 255 - x * 255 // 640))
    draw.ellipse((220, 140, 420, 340), fill=(255, 220, 0))
    image.save(path, format="PNG")
    return path


class _Follower:
    """Polls the result backend for every tracked task in a thread of its own, so states
    change on screen while the demo is still enqueueing, and prints each change once."""

    def __init__(self, settings: Settings, out: TextIO) -> None:
        # Its own producer: Celery's result backend objects are not shared across threads.
        self._producer = TaskProducer(settings)
        self._out = out
        self._items: list[_Tracked] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="demo-follower", daemon=True)

    @property
    def items(self) -> list[_Tracked]:
        with self._lock:
            return list(self._items)

    def say(self, line: str) -> None:
        with self._lock:
            print(f"{_stamp()}  (+{time.monotonic() - self._started:5.2f}s) {line}",
                  file=self._out, flush=True)

    def track(self, item: _Tracked) -> None:
        with self._lock:
            self._items.append(item)
        self.say(f"{item.label:<34} {item.task_id}  enqueued")

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float) -> None:
        """Until every tracked task is final, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(item.done for item in self.items):
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._producer.close()

    def _run(self) -> None:
        while not self._stopping.wait(0.02):
            for item in self.items:
                if not item.done:
                    self._poll(item)

    def _poll(self, item: _Tracked) -> None:
        status = self._producer.status(item.task_id)
        item.last = status
        if status.state == item.state:
            return
        previous, item.state = item.state, status.state
        detail = ""
        if status.state == "SUCCESS":
            detail = f"  result={status.result!r}"
        elif status.error:
            detail = f"  {status.error}"
        self.say(f"{item.label:<34} {item.task_id}  {previous} -> {status.state}{detail}")


def _enqueue_all(producer: TaskProducer, follower: _Follower, chord_header: list[Any]) -> None:
    """Enqueue the demo's tasks; the chord header's result objects go to ``chord_header``."""
    track = follower.track
    track(_Tracked(
        "add_numbers(2, 3)",
        producer.enqueue(ADD_NUMBERS, queue=DEFAULT, args=(2, 3)),
        expected_result=_equals(5),
    ))
    track(_Tracked(
        "send_welcome_email(newcomer@…)",
        producer.enqueue(
            SEND_WELCOME_EMAIL, queue=EMAIL, kwargs={"user_email": "newcomer@example.com"}
        ),
    ))
    payment_key = f"demo-{uuid.uuid4().hex}"
    track(_Tracked(
        "process_payment(19.99 USD)",
        producer.enqueue(
            PROCESS_PAYMENT,
            queue=PAYMENTS,
            kwargs={
                "transaction_id": f"demo-txn-{uuid.uuid4().hex[:12]}",
                "amount": "19.99",
                "currency": "USD",
                "idempotency_key": payment_key,
            },
            idempotency_key=payment_key,
        ),
    ))
    track(_Tracked(
        "make_thumbnail(128x128, 64x64)",
        producer.enqueue(
            MAKE_THUMBNAIL,
            queue=MEDIA,
            kwargs={"source": SAMPLE_IMAGE, "sizes": [[128, 128], [64, 64]]},
        ),
    ))

    app = producer.app

    def add(*args: int) -> Any:
        return app.signature(ADD_NUMBERS, args=args, queue=DEFAULT)

    chained = chain(add(2, 2), add(4)).apply_async()
    track(_Tracked("chain: add(2, 2)", chained.parent.id, expected_result=_equals(4)))
    track(_Tracked("chain: | add(4)", chained.id, expected_result=_equals(8)))

    grouped = group(add(n, n) for n in (1, 2, 3)).apply_async()
    for n, child in zip((1, 2, 3), grouped.results, strict=True):
        track(_Tracked(f"group: add({n}, {n})", child.id, expected_result=_equals(2 * n)))

    pairs = ((1, 2), (3, 4), (5, 6))
    body = app.signature(SUM_NUMBERS, queue=DEFAULT)
    chorded = chord([add(x, y) for x, y in pairs])(body)
    chord_header.extend(chorded.parent.results)
    for (x, y), child in zip(pairs, chorded.parent.results, strict=True):
        track(_Tracked(f"chord header: add({x}, {y})", child.id, expected_result=_equals(x + y)))
    track(_Tracked("chord body: sum_numbers", chorded.id, expected_result=_equals(21)))

    # A countdown keeps it waiting in the worker; the revoke lands before it is due, and the
    # worker records REVOKED when the countdown runs out.
    doomed = producer.enqueue(ADD_NUMBERS, queue=DEFAULT, args=(40, 2), countdown=3)
    track(_Tracked("add_numbers(40, 2) in 3s, revoked", doomed, expected_state="REVOKED"))
    producer.revoke(doomed)
    follower.say(f"{'add_numbers(40, 2) in 3s, revoked':<34} {doomed}  revoke sent")


def _summary(items: list[_Tracked], out: TextIO) -> bool:
    print("", file=out)
    print("demo results:", file=out)
    for item in items:
        mark = "ok  " if item.as_expected else "FAIL"
        state = item.state
        outcome = ""
        if item.last is not None and state == "SUCCESS":
            outcome = f" result={item.last.result!r}"
        elif item.last is not None and item.last.error:
            outcome = f" {item.last.error}"
        expected = "" if item.as_expected else f" (expected {item.expected_state})"
        print(f"  {mark} {item.label:<34} {state}{outcome}{expected}", file=out)
    everything = bool(items) and all(item.as_expected for item in items)
    verdict = "finished as expected" if everything else "did NOT finish as expected"
    print(f"demo {verdict}", file=out, flush=True)
    return everything


def _release_chord_header(results: list[Any]) -> None:
    # Celery registers a chord header's results with the result backend until someone waits
    # on them. Waiting here, while Redis is up, releases them; otherwise they try to
    # unsubscribe at exit, against a stopped server, and print a traceback.
    for result in results:
        with contextlib.suppress(Exception):
            result.get(timeout=1.0, propagate=False)
    results.clear()


def run_demo(stack_settings: Settings, out: TextIO, *, timeout: float = 60.0) -> bool:
    """Run the demo against a running stack; whether every task ended as expected."""
    write_sample_image(stack_settings.media_root)
    follower = _Follower(stack_settings, out)
    producer = TaskProducer(stack_settings)
    chord_header: list[Any] = []
    try:
        follower.start()
        follower.say("demo: one task per queue, a chain, a group, a chord and a revoke")
        _enqueue_all(producer, follower, chord_header)
        follower.wait(timeout)
    finally:
        follower.stop()
        _release_chord_header(chord_header)
        producer.close()
    return _summary(follower.items, out)
