"""Amounts to minor units: exact, per currency, and never a silent rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest

from platform_tasks.contracts import PaymentArgs
from platform_tasks.money import AmountError, format_amount, from_minor_units, to_minor_units


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.34", "USD", 1234),
        ("12.3", "EUR", 1230),
        ("12", "GBP", 1200),
        ("0.01", "USD", 1),
        ("1000000", "USD", 100_000_000),
        ("1E+2", "USD", 10_000),
        ("500", "JPY", 500),
        ("1.5", "KWD", 1500),
        ("0.001", "BHD", 1),
    ],
)
def test_amounts_convert_exactly(amount: str, currency: str, minor: int) -> None:
    assert to_minor_units(Decimal(amount), currency) == minor


def test_a_float_argument_goes_through_its_decimal_repr_not_binary() -> None:
    # 0.1 + 0.2 as a float is 0.30000000000000004; the contract reads floats via str().
    arguments = PaymentArgs(transaction_id="t", amount=19.99, currency="USD",
                            idempotency_key="key-00001")
    assert to_minor_units(arguments.amount, arguments.currency) == 1999


@pytest.mark.parametrize(
    ("amount", "currency"), [("10.5", "JPY"), ("0.001", "USD"), ("1.0001", "KWD")]
)
def test_fractions_of_a_minor_unit_are_refused(amount: str, currency: str) -> None:
    with pytest.raises(AmountError, match="decimal place"):
        to_minor_units(Decimal(amount), currency)


def test_non_finite_amounts_are_refused() -> None:
    with pytest.raises(AmountError):
        to_minor_units(Decimal("NaN"), "USD")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(1234, "USD", "12.34"), (1200, "USD", "12.00"), (5, "USD", "0.05"), (500, "JPY", "500"),
     (1500, "KWD", "1.500")],
)
def test_minor_units_format_with_the_currency_decimals(minor: int, currency: str,
                                                      text: str) -> None:
    assert format_amount(minor, currency) == text
    assert to_minor_units(from_minor_units(minor, currency), currency) == minor
