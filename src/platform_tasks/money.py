"""Amounts in minor units (cents), the integer form payment gateways expect.

A float never touches an amount: ``Decimal`` in, ``int`` out, and an amount that does not fit
the currency's minor unit (``10.5 JPY``) is an error rather than a silent rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

#: ISO 4217 currencies whose minor unit is not 1/100. Every other code has two decimals.
MINOR_UNIT_EXPONENTS: Mapping[str, int] = MappingProxyType(
    {
        # no minor unit
        "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
        "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
        "XPF": 0,
        # thousandths
        "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
        # ten-thousandths
        "CLF": 4, "UYW": 4,
    }
)
DEFAULT_EXPONENT = 2


class AmountError(ValueError):
    """An amount that cannot be expressed in its currency's minor units."""


def exponent(currency: str) -> int:
    """How many decimal places ``currency``'s minor unit has."""
    return MINOR_UNIT_EXPONENTS.get(currency.upper(), DEFAULT_EXPONENT)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """``Decimal("12.34"), "USD"`` -> ``1234``; refuses fractions of a minor unit."""
    if not amount.is_finite():
        raise AmountError(f"amount {amount} is not a finite number")
    places = exponent(currency)
    try:
        scaled = amount.scaleb(places)
        whole = scaled.to_integral_value()
    except InvalidOperation as error:
        raise AmountError(f"amount {amount} cannot be read as {currency}") from error
    if scaled != whole:
        raise AmountError(
            f"amount {amount} {currency} has more than {places} decimal place(s)"
        )
    return int(whole)


def from_minor_units(minor: int, currency: str) -> Decimal:
    """``1234, "USD"`` -> ``Decimal("12.34")``, with exactly the currency's decimal places."""
    return Decimal(minor).scaleb(-exponent(currency))


def format_amount(minor: int, currency: str) -> str:
    """``1234, "USD"`` -> ``"12.34"``; ``500, "JPY"`` -> ``"500"``."""
    places = exponent(currency)
    value = from_minor_units(minor, currency)
    return f"{value:.{places}f}"
