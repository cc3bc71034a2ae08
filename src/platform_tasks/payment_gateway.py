"""A client for the payment gateway's one call: ``POST {base}/charges``.

Stdlib ``http.client`` on purpose: no new dependency, and no proxy picked up from the
environment behind our back. Every failure becomes :class:`GatewayUnavailableError` (try again, the
gateway dedupes by idempotency key) or :class:`GatewayRejectedError` (it said no; do not retry).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: A gateway's answer is a small JSON object; anything bigger is not one.
MAX_RESPONSE_BYTES = 1024 * 1024
#: 4xx statuses that mean "not now" rather than "no".
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


class GatewayError(Exception):
    """The gateway call did not produce a charge."""


class GatewayUnavailableError(GatewayError):
    """Network trouble, a timeout, a 5xx or a garbled reply: the same call may succeed later."""


class GatewayRejectedError(GatewayError):
    """The gateway refused the charge (4xx); the same call will be refused again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"payment gateway refused the charge ({status}): {message}")
        self.status = status
        self.gateway_message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle rebuild an exception from its args; this one takes two.
        return (type(self), (self.status, self.gateway_message))


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    transaction_id: str
    amount_minor: int
    currency: str
    idempotency_key: str

    def body(self) -> bytes:
        return json.dumps(
            {
                "transaction_id": self.transaction_id,
                "amount_minor": self.amount_minor,
                "currency": self.currency,
            },
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True, slots=True)
class Charge:
    charge_id: str
    transaction_id: str
    amount_minor: int
    currency: str
    status: str


def _connection(base_url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise GatewayRejectedError(0, f"payment gateway URL {base_url!r} is not http(s)://host")
    path = parts.path.rstrip("/") + "/charges"
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        ), path
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), path


def _message(body: bytes) -> str:
    """The gateway's own explanation: ``{"error": ...}`` if it sent JSON, else the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text[:500] or "(empty response)"
    if isinstance(document, dict):
        for field in ("error", "message", "detail"):
            if isinstance(document.get(field), str):
                return str(document[field])
    return text[:500]


def _charge(body: bytes) -> Charge:
    try:
        document = json.loads(body)
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
        amount = document["amount_minor"]
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError("amount_minor is not an integer")
        return Charge(
            charge_id=str(document["charge_id"]),
            transaction_id=str(document["transaction_id"]),
            amount_minor=amount,
            currency=str(document["currency"]),
            status=str(document["status"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        # The charge may exist; asking again with the same key returns it.
        raise GatewayUnavailableError(
            f"payment gateway sent an unreadable charge: {error}"
        ) from None


def create_charge(base_url: str, request: ChargeRequest, *, timeout: float) -> Charge:
    """Ask the gateway at ``base_url`` for a charge; the same idempotency key gives one charge."""
    connection, path = _connection(base_url, timeout)
    try:
        connection.request(
            "POST",
            path,
            body=request.body(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Idempotency-Key": request.idempotency_key,
            },
        )
        response = connection.getresponse()
        body = response.read(MAX_RESPONSE_BYTES + 1)
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        raise GatewayUnavailableError(f"cannot reach the payment gateway: {error!r}") from error
    finally:
        connection.close()
    if len(body) > MAX_RESPONSE_BYTES:
        raise GatewayUnavailableError("payment gateway sent an oversized response")
    if 200 <= status < 300:
        return _charge(body)
    if status >= 500 or status in RETRYABLE_CLIENT_STATUSES:
        raise GatewayUnavailableError(f"payment gateway answered {status}: {_message(body)}")
    raise GatewayRejectedError(status, _message(body))
