"""The gateway client against the real stub: charges, replays, and which errors retry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platform_tasks.devstack.gateway import PaymentGatewayStub
from platform_tasks.devstack.ports import free_port
from platform_tasks.payment_gateway import (
    ChargeRequest,
    GatewayRejectedError,
    GatewayUnavailableError,
    create_charge,
)

REQUEST = ChargeRequest(transaction_id="tx-9", amount_minor=4200, currency="EUR",
                        idempotency_key="idem-0009")


@pytest.fixture
def stub() -> Iterator[PaymentGatewayStub]:
    with PaymentGatewayStub() as running:
        yield running


def test_a_charge_is_created_and_a_repeat_returns_it(stub: PaymentGatewayStub) -> None:
    first = create_charge(stub.url, REQUEST, timeout=5)
    again = create_charge(stub.url + "/", REQUEST, timeout=5)

    assert first == again
    assert (first.transaction_id, first.amount_minor, first.currency) == ("tx-9", 4200, "EUR")
    assert stub.charge_count("idem-0009") == 1


def test_a_503_is_unavailable(stub: PaymentGatewayStub) -> None:
    stub.fail_next(1)

    with pytest.raises(GatewayUnavailableError, match="503"):
        create_charge(stub.url, REQUEST, timeout=5)
    assert stub.charges() == []


def test_a_decline_is_rejected_with_the_gateways_message(stub: PaymentGatewayStub) -> None:
    declined = ChargeRequest("tx-1", 100, "XXX", "idem-0010")

    with pytest.raises(GatewayRejectedError) as rejected:
        create_charge(stub.url, declined, timeout=5)

    assert rejected.value.status == 402
    assert "card declined" in rejected.value.gateway_message


def test_a_conflicting_reuse_of_a_key_is_rejected(stub: PaymentGatewayStub) -> None:
    create_charge(stub.url, REQUEST, timeout=5)
    other = ChargeRequest("tx-9", 1, "EUR", "idem-0009")

    with pytest.raises(GatewayRejectedError, match="409"):
        create_charge(stub.url, other, timeout=5)


def test_an_unreachable_gateway_is_unavailable() -> None:
    with pytest.raises(GatewayUnavailableError, match="cannot reach"):
        create_charge(f"http://127.0.0.1:{free_port()}", REQUEST, timeout=2)
