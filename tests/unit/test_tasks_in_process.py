"""Task bodies run in-process (Celery's ``apply``) against a real redis-server, a real SMTP sink
and the real gateway stub. ``apply`` runs a retry at once, without its countdown, so the retry
paths run to the end in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from platform_tasks import keys, run_signals, stats
from platform_tasks.app import PlatformCelery, create_app
from platform_tasks.contracts import (
    ADD_NUMBERS,
    MAKE_THUMBNAIL,
    PROCESS_PAYMENT,
    SEND_DAILY_REPORT,
    SEND_WELCOME_EMAIL,
)
from platform_tasks.devstack.gateway import PaymentGatewayStub
from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.smtp_sink import SmtpSink
from platform_tasks.settings import load_settings
from platform_tasks.tasks import _redis
from platform_tasks.tasks._base import PermanentTaskError


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def gateway() -> Iterator[PaymentGatewayStub]:
    with PaymentGatewayStub() as running:
        yield running


@pytest.fixture
def app(
    redis_url: str, sink: SmtpSink, gateway: PaymentGatewayStub, tmp_path: Path
) -> Iterator[PlatformCelery]:
    settings = load_settings({
        "PLATFORM_TASKS_REDIS_URL": redis_url,
        "PLATFORM_TASKS_SMTP_PORT": str(sink.port),
        "PLATFORM_TASKS_SMTP_SENDER": "platform@example.com",
        "PLATFORM_TASKS_PAYMENT_GATEWAY_URL": gateway.url,
        "PLATFORM_TASKS_MEDIA_ROOT": str(tmp_path / "media"),
        "PLATFORM_TASKS_MAX_IMAGE_PIXELS": "1000000",
    })
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    celery_app = create_app(settings)
    celery_app.loader.import_default_modules()  # what a worker does with ``include``
    yield celery_app
    _redis.reset()


@pytest.fixture
def db(app: PlatformCelery) -> redis.Redis:
    return _redis.client_for(app.settings)


def run(app: PlatformCelery, contract_name: str, *args: Any, task_id: str | None = None
        ) -> Any:
    return app.tasks[contract_name].apply(args=args, task_id=task_id)


# -- welcome e-mail ------------------------------------------------------------------------


def test_welcome_email_is_sent_once_per_task_id(app: PlatformCelery, sink: SmtpSink,
                                                db: redis.Redis) -> None:
    first = run(app, SEND_WELCOME_EMAIL.name, "new@example.com", task_id="welcome-1")
    again = run(app, SEND_WELCOME_EMAIL.name, "new@example.com", task_id="welcome-1")

    assert first.successful(), first.result
    assert first.result["recipient"] == "new@example.com"
    assert again.result == {**first.result, "deduplicated": True}
    [received] = sink.messages()
    assert received["Message-ID"] == first.result["message_id"]
    assert "Welcome" in received["Subject"]
    assert 0 < db.ttl(keys.email_sent("welcome-1")) <= 4 * 24 * 3600


def test_welcome_email_to_a_refused_address_fails_without_retry(
    app: PlatformCelery, sink: SmtpSink
) -> None:
    # invalid.test would not even pass the contract's EmailStr; this domain does.
    result = run(app, SEND_WELCOME_EMAIL.name, "ghost@invalid.example.com", task_id="welcome-2")

    assert result.failed()
    assert isinstance(result.result, PermanentTaskError)
    assert "550" in str(result.result)
    assert sink.messages() == []


def test_welcome_email_deferred_by_the_server_is_retried_and_delivered_once(
    app: PlatformCelery, sink: SmtpSink
) -> None:
    result = run(app, SEND_WELCOME_EMAIL.name, "tempfail-7@example.com", task_id="welcome-3")

    assert result.successful(), result.result
    assert len(sink.messages()) == 1


# -- payments -------------------------------------------------------------------------------


def payment(app: PlatformCelery, key: str = "idem-key-0001", amount: str = "19.99",
            currency: str = "USD", task_id: str | None = None) -> Any:
    return run(app, PROCESS_PAYMENT.name, "tx-100", amount, currency, key, task_id=task_id)


def test_a_payment_charges_once_and_a_repeat_is_served_from_the_record(
    app: PlatformCelery, gateway: PaymentGatewayStub, db: redis.Redis
) -> None:
    first = payment(app)
    seen = gateway.requests_seen
    again = payment(app)

    assert first.successful(), first.result
    assert first.result["amount"] == "19.99"
    assert first.result["deduplicated"] is False
    assert again.result == {**first.result, "deduplicated": True}
    assert gateway.requests_seen == seen  # the repeat never reached the gateway
    assert gateway.charges()[0]["amount_minor"] == 1999
    stored = db.get(keys.payment_record("idem-key-0001"))
    assert stored is not None
    record = json.loads(stored)
    assert record["charge_id"] == first.result["charge_id"]
    assert db.ttl(keys.payment_record("idem-key-0001")) > 29 * 24 * 3600
    assert db.get(keys.payment_lock("idem-key-0001")) is None


def test_gateway_503s_are_retried_until_the_single_charge_succeeds(
    app: PlatformCelery, gateway: PaymentGatewayStub
) -> None:
    gateway.fail_next(3)

    result = payment(app)

    assert result.successful(), result.result
    assert gateway.requests_seen == 4
    assert gateway.charge_count("idem-key-0001") == 1


def test_a_gateway_that_stays_down_fails_after_the_policys_retries(
    app: PlatformCelery, gateway: PaymentGatewayStub
) -> None:
    gateway.fail_next(100)

    result = payment(app)

    assert result.failed()
    assert gateway.requests_seen == 1 + app.tasks[PROCESS_PAYMENT.name].policy.retry.max_retries
    assert gateway.charges() == []


def test_a_declined_payment_fails_at_once(app: PlatformCelery, gateway: PaymentGatewayStub,
                                          db: redis.Redis) -> None:
    result = payment(app, currency="XXX")

    assert result.failed()
    assert isinstance(result.result, PermanentTaskError)
    assert "402" in str(result.result)
    assert "declined" in str(result.result)
    assert gateway.requests_seen == 1
    assert db.get(keys.payment_record("idem-key-0001")) is None


def test_a_held_lock_makes_the_run_wait_without_calling_the_gateway(
    app: PlatformCelery, gateway: PaymentGatewayStub, db: redis.Redis
) -> None:
    db.set(keys.payment_lock("idem-key-0001"), "another-run", ex=60)

    result = payment(app)

    assert result.failed()  # apply() burns through every retry at once
    assert "another run is charging" in str(result.result)
    assert gateway.requests_seen == 0
    assert db.get(keys.payment_lock("idem-key-0001")) == "another-run"


def test_reusing_a_key_for_another_amount_is_refused(app: PlatformCelery,
                                                     gateway: PaymentGatewayStub) -> None:
    payment(app)

    result = payment(app, amount="5.00")

    assert isinstance(result.result, PermanentTaskError)
    assert "different payment" in str(result.result)
    assert len(gateway.charges()) == 1


def test_an_amount_finer_than_the_currency_allows_is_refused(app: PlatformCelery,
                                                             gateway: PaymentGatewayStub) -> None:
    result = payment(app, amount="10.50", currency="JPY")

    assert isinstance(result.result, PermanentTaskError)
    assert gateway.requests_seen == 0


# -- thumbnails -----------------------------------------------------------------------------


def test_make_thumbnail_writes_the_files_and_reports_them(app: PlatformCelery) -> None:
    media = app.settings.media_root
    media.mkdir(parents=True)
    Image.new("RGB", (600, 300), "blue").save(media / "cat.png")

    result = run(app, MAKE_THUMBNAIL.name, "cat.png", [[120, 120], 64])

    assert result.successful(), result.result
    assert result.result == {
        "source": "cat.png",
        "thumbnails": [
            {"path": "thumbnails/cat_120x120.png", "width": 120, "height": 60},
            {"path": "thumbnails/cat_64x64.png", "width": 64, "height": 32},
        ],
    }


def test_make_thumbnail_refuses_an_image_over_the_configured_pixels(app: PlatformCelery
                                                                    ) -> None:
    media = app.settings.media_root
    media.mkdir(parents=True)
    Image.new("RGB", (2000, 1000), "blue").save(media / "huge.png")

    result = run(app, MAKE_THUMBNAIL.name, "huge.png", [64])

    assert isinstance(result.result, PermanentTaskError)
    assert "over the limit of 1000000" in str(result.result)


# -- statistics and the daily report ----------------------------------------------------------


@pytest.fixture
def counting() -> Iterator[None]:
    stats.connect_signals()
    yield
    stats.disconnect_signals()


@pytest.mark.usefixtures("counting")
def test_signals_count_successes_failures_and_retries(app: PlatformCelery,
                                                      db: redis.Redis) -> None:
    run(app, ADD_NUMBERS.name, 1, 2)
    run(app, ADD_NUMBERS.name, 3, 4)
    run(app, SEND_WELCOME_EMAIL.name, "ghost@invalid.example.com")
    run(app, SEND_WELCOME_EMAIL.name, "tempfail-9@example.com")
    stats.flush()  # a worker writes its counters about once a second

    rows = {row.task: row for row in stats.read_stats(db, stats.today_utc())}

    add = rows[ADD_NUMBERS.name]
    assert (add.succeeded, add.failed, add.retried) == (2, 0, 0)
    assert add.mean_runtime_ms is not None
    assert add.mean_runtime_ms >= 0
    email = rows[SEND_WELCOME_EMAIL.name]
    assert (email.succeeded, email.failed, email.retried) == (1, 1, 1)
    assert 7 * 24 * 3600 < db.ttl(keys.task_stats(stats.today_utc())) <= 8 * 24 * 3600
    assert run_signals._running.get() is None  # every postrun ended its run


@pytest.mark.usefixtures("counting")
def test_a_broken_stats_store_never_fails_the_task(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                              "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT": "0.5"})
    broken = create_app(settings)
    broken.loader.import_default_modules()
    try:
        result = run(broken, ADD_NUMBERS.name, 2, 2)
    finally:
        _redis.reset()

    assert result.successful()
    assert result.result == 4


def test_the_daily_report_mails_yesterday_and_today(app: PlatformCelery, sink: SmtpSink,
                                                    db: redis.Redis) -> None:
    today = stats.today_utc()
    yesterday = today - timedelta(days=1)
    for _ in range(3):
        stats.record(db, PROCESS_PAYMENT.name, "succeeded", runtime_ms=40, day=yesterday)
    stats.record(db, PROCESS_PAYMENT.name, "retried", day=yesterday)
    stats.record(db, SEND_WELCOME_EMAIL.name, "failed", day=yesterday)
    stats.record(db, ADD_NUMBERS.name, "succeeded", runtime_ms=2, day=today)

    result = run(app, SEND_DAILY_REPORT.name, "ops@example.com", task_id="report-1")

    assert result.successful(), result.result
    assert result.result["recipient"] == "ops@example.com"
    assert result.result["day"] == yesterday.isoformat()
    assert result.result["totals"] == {"succeeded": 3, "failed": 1, "retried": 1}
    assert result.result["today_totals"] == {"succeeded": 1, "failed": 0, "retried": 0}
    [mail] = sink.messages()
    assert mail["To"] == "ops@example.com"
    assert yesterday.isoformat() in mail["Subject"]
    body = mail.get_content()
    assert f"Previous day (complete): {yesterday.isoformat()}" in body
    assert "Today so far (until" in body
    assert today.isoformat() in body
    payment_line = next(line for line in body.splitlines() if PROCESS_PAYMENT.name in line)
    assert payment_line.split() == [PROCESS_PAYMENT.name, "3", "0", "1", "40", "ms"]
