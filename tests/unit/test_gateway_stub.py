"""The payment gateway stub, over real HTTP: it dedupes, declines, validates and fails on cue."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from platform_tasks.devstack.gateway import PaymentGatewayStub

CHARGE = {"transaction_id": "tx-1", "amount_minor": 1250, "currency": "USD"}


@pytest.fixture
def stub() -> Iterator[PaymentGatewayStub]:
    with PaymentGatewayStub() as running:
        yield running


def request(
    stub: PaymentGatewayStub, method: str, path: str, body: Any = None,
    key: str | None = "key-0001", raw: bytes | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    document = json.loads(response.read())
    connection.close()
    return response.status, document, response


def post(stub: PaymentGatewayStub, body: Any = CHARGE, key: str | None = "key-0001"
         ) -> tuple[int, dict[str, Any]]:
    status, document, _ = request(stub, "POST", "/charges", body, key)
    return status, document


def test_a_new_key_creates_one_charge(stub: PaymentGatewayStub) -> None:
    status, charge = post(stub)

    assert status == 201
    assert charge["charge_id"].startswith("ch_")
    assert {k: charge[k] for k in CHARGE} == CHARGE
    assert charge["status"] == "succeeded"
    assert stub.charge_count("key-0001") == 1
    assert stub.url == f"http://127.0.0.1:{stub.port}"


def test_the_same_key_and_body_returns_the_first_charge_without_a_second(
    stub: PaymentGatewayStub,
) -> None:
    _, first = post(stub)

    status, again, response = request(stub, "POST", "/charges", CHARGE)

    assert status == 200
    assert again == first
    assert response.headers["Idempotent-Replayed"] == "true"
    assert stub.charge_count("key-0001") == 1
    assert len(stub.charges()) == 1


def test_the_same_key_with_another_body_is_a_conflict(stub: PaymentGatewayStub) -> None:
    post(stub)

    status, error = post(stub, {**CHARGE, "amount_minor": 999})

    assert status == 409
    assert "different request body" in error["error"]
    assert stub.charge_count("key-0001") == 1


def test_concurrent_requests_with_one_key_make_one_charge(stub: PaymentGatewayStub) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def charge() -> None:
        status, _ = post(stub, key="key-race")
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=charge) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] * 15 + [201]
    assert stub.charge_count("key-race") == 1


def test_every_nth_request_fails_with_503_before_anything_happens() -> None:
    with PaymentGatewayStub(fail_every=3) as stub:
        statuses = [post(stub, key=f"key-{n:04d}")[0] for n in range(6)]

        assert statuses == [201, 201, 503, 201, 201, 503]
        assert stub.requests_seen == 6
        # The 503s created nothing: keys 2 and 5 have no charge.
        assert stub.charge_count("key-0002") == 0
        assert len(stub.charges()) == 4


def test_fail_next_fails_exactly_that_many_requests(stub: PaymentGatewayStub) -> None:
    stub.fail_next(2)

    statuses = [post(stub)[0] for _ in range(3)]

    assert statuses == [503, 503, 201]
    assert stub.requests_seen == 3
    assert stub.charge_count("key-0001") == 1


def test_503_carries_retry_after(stub: PaymentGatewayStub) -> None:
    stub.fail_next(1)

    status, error, response = request(stub, "POST", "/charges", CHARGE)

    assert status == 503
    assert response.headers["Retry-After"] == "1"
    assert "unavailable" in error["error"]


def test_a_declined_currency_is_a_402_and_no_charge(stub: PaymentGatewayStub) -> None:
    status, error = post(stub, {**CHARGE, "currency": "XXX"})

    assert status == 402
    assert "declined" in error["error"]
    assert stub.charges() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"amount_minor": 100, "currency": "USD"}, "missing field(s): transaction_id"),
        ({**CHARGE, "amount_minor": 0}, "positive integer"),
        ({**CHARGE, "amount_minor": -5}, "positive integer"),
        ({**CHARGE, "amount_minor": "100"}, "positive integer"),
        ({**CHARGE, "amount_minor": 12.5}, "positive integer"),
        ({**CHARGE, "amount_minor": True}, "positive integer"),
        ({**CHARGE, "currency": "usd"}, "ISO 4217"),
        ({**CHARGE, "transaction_id": ""}, "transaction_id"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(
    stub: PaymentGatewayStub, body: Any, message: str
) -> None:
    status, error = post(stub, body)

    assert status == 400
    assert message in error["error"]
    assert stub.charges() == []


def test_a_body_that_is_not_json_is_a_400(stub: PaymentGatewayStub) -> None:
    status, error, _ = request(stub, "POST", "/charges", raw=b"{not json")

    assert status == 400
    assert "not valid JSON" in error["error"]


def test_a_missing_idempotency_key_is_a_400(stub: PaymentGatewayStub) -> None:
    status, error = post(stub, key=None)

    assert status == 400
    assert "Idempotency-Key" in error["error"]


def test_get_lists_charges_and_answers_health(stub: PaymentGatewayStub) -> None:
    post(stub)

    status, listing, _ = request(stub, "GET", "/charges")
    health_status, health, _ = request(stub, "GET", "/health")
    missing_status, _, _ = request(stub, "GET", "/nothing")

    assert status == 200
    assert [c["transaction_id"] for c in listing["charges"]] == ["tx-1"]
    assert (health_status, health) == (200, {"status": "ok"})
    assert missing_status == 404


def test_port_zero_binds_a_real_free_port_per_stub() -> None:
    with PaymentGatewayStub() as one, PaymentGatewayStub() as two:
        assert one.port != two.port
        assert post(one)[0] == post(two)[0] == 201


def test_standalone_run_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "platform_tasks.devstack.gateway", "--port", "0",
         "--fail-every", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        statuses = []
        for _ in range(2):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/charges", body=json.dumps(CHARGE),
                               headers={"Idempotency-Key": "key-cli1"})
            statuses.append(connection.getresponse().status)
            connection.close()
        assert statuses == [201, 503]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
