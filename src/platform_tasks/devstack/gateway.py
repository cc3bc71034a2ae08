"""A payment gateway stub: a real HTTP server on loopback that behaves like a careful gateway.

``POST /charges`` validates its JSON, dedupes by the ``Idempotency-Key`` header (the same key
and body return the first charge; the same key with another body is a 409), declines currency
``XXX`` with a 402, and fails with a 503 on a schedule (every N-th charge request) or on demand
(:meth:`PaymentGatewayStub.fail_next`), so tests can watch retries and prove a single charge.
``GET /charges`` lists the charges, ``GET /health`` answers ``{"status": "ok"}``.

Run on its own with ``python -m platform_tasks.devstack.gateway --port P --fail-every N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import signal
import socketserver
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from platform_tasks.devstack.lifecycle import Service

logger = logging.getLogger(__name__)

#: Currencies the stub declines, so tests can take the gateway's 4xx path.
DECLINED_CURRENCIES = frozenset({"XXX"})
MAX_BODY_BYTES = 64 * 1024
REQUIRED_FIELDS = ("transaction_id", "amount_minor", "currency")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


#: A held request gives up waiting after this long, so a forgotten release() cannot hang a run.
HOLD_LIMIT_SECONDS = 60.0


class _RefusedError(Exception):
    """Ends a request with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _validate(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise _RefusedError(400, "body is not valid JSON") from None
    if not isinstance(document, dict):
        raise _RefusedError(400, "body must be a JSON object")
    missing = [field for field in REQUIRED_FIELDS if field not in document]
    if missing:
        raise _RefusedError(400, f"missing field(s): {', '.join(missing)}")
    transaction_id = document["transaction_id"]
    if not isinstance(transaction_id, str) or not transaction_id.strip():
        raise _RefusedError(400, "transaction_id must be a non-empty string")
    amount = document["amount_minor"]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise _RefusedError(400, "amount_minor must be a positive integer (minor units)")
    currency = document["currency"]
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise _RefusedError(400, "currency must be a three-letter ISO 4217 code")
    return {"transaction_id": transaction_id, "amount_minor": amount, "currency": currency}


class PaymentGatewayStub(Service):
    """The stub server; :meth:`start` it, point the tasks at :attr:`url`, :meth:`stop` it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fail_every: int = 0) -> None:
        if fail_every < 0:
            raise ValueError("fail_every must be 0 (never) or a positive number")
        self.host = host
        self._requested_port = port
        self.fail_every = fail_every
        self._lock = threading.Lock()
        self._charges: list[dict[str, Any]] = []
        # idempotency key -> (the request it came with, the charge it made)
        self._by_key: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._requests_seen = 0
        self._fail_pending = 0
        # Cleared by hold(): charges wait, as behind a slow gateway, until release().
        self._open = threading.Event()
        self._open.set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Bind (port 0 picks a free one) and serve from a background thread."""
        if self._server is not None:
            raise RuntimeError("the gateway stub is already running")
        server = _Server((self.host, self._requested_port), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name="payment-gateway-stub", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway stub is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``; the tasks append ``/charges``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- what tests look at and steer ----------------------------------------------------

    @property
    def requests_seen(self) -> int:
        """``POST /charges`` requests received, whatever their outcome (503s included)."""
        with self._lock:
            return self._requests_seen

    def charges(self) -> list[dict[str, Any]]:
        """Every charge made, oldest first (copies)."""
        with self._lock:
            return [dict(charge) for charge in self._charges]

    def charge_count(self, idempotency_key: str) -> int:
        """How many charges were made under ``idempotency_key`` (1 at most, if dedupe works)."""
        with self._lock:
            return sum(1 for c in self._charges if c["idempotency_key"] == idempotency_key)

    def fail_next(self, count: int) -> None:
        """Answer the next ``count`` ``POST /charges`` with 503, before looking at them."""
        if count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            self._fail_pending = count

    def hold(self) -> None:
        """Make ``POST /charges`` wait (up to a minute) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        """Let held and later requests through."""
        self._open.set()

    # -- request handling (called from the server's threads) ----------------------------

    def _should_fail(self) -> bool:
        """Count the request and decide, atomically, whether it is one that fails."""
        with self._lock:
            self._requests_seen += 1
            if self._fail_pending > 0:
                self._fail_pending -= 1
                return True
            return self.fail_every > 0 and self._requests_seen % self.fail_every == 0

    def _charge(self, idempotency_key: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:  # check and create as one step, or two concurrent calls charge twice
            earlier = self._by_key.get(idempotency_key)
            if earlier is not None:
                request, charge = earlier
                if request != fields:
                    raise _RefusedError(
                        409, f"Idempotency-Key {idempotency_key!r} was used with a different "
                             "request body"
                    )
                return 200, dict(charge)
            if fields["currency"] in DECLINED_CURRENCIES:
                raise _RefusedError(402, f"card declined: currency {fields['currency']} is not "
                                    "accepted")
            charge = {
                "charge_id": f"ch_{secrets.token_hex(12)}",
                **fields,
                "status": "succeeded",
                "idempotency_key": idempotency_key,
                "created_at": datetime.now(UTC).isoformat(),
            }
            self._by_key[idempotency_key] = (fields, charge)
            self._charges.append(charge)
            return 201, dict(charge)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a thread pool of 8 or 16 workers connecting
    # at once had its extra connections dropped and retried a second later.
    request_queue_size = 128
    stub: PaymentGatewayStub

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN, which can stall; we need none.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "PaymentGatewayStub/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def _send_json(self, status: int, document: Any, headers: dict[str, str] | None = None,
                   ) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        path = self._path()
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == "/charges":
            self._send_json(200, {"charges": self.server.stub.charges()})
        else:
            self._send_json(404, {"error": f"no such resource {path}"})

    def do_POST(self) -> None:
        path = self._path()
        if path != "/charges":
            self._send_json(404, {"error": f"no such resource {path}"})
            return
        stub = self.server.stub
        stub._open.wait(timeout=HOLD_LIMIT_SECONDS)
        if stub._should_fail():
            # Fail before looking at the request, like a gateway falling over. The body is
            # still drained: closing a socket with unread data resets the connection, and the
            # client would see a reset instead of this 503.
            self._discard_body()
            self._send_json(503, {"error": "gateway temporarily unavailable"},
                            {"Retry-After": "1"})
            return
        try:
            body = self._read_body()
            key = (self.headers.get("Idempotency-Key") or "").strip()
            if not key:
                raise _RefusedError(400, "the Idempotency-Key header is required")
            status, charge = stub._charge(key, _validate(body))
        except _RefusedError as refusal:
            self._send_json(refusal.status, {"error": refusal.message})
            return
        replayed = {"Idempotent-Replayed": "true"} if status == 200 else {}
        self._send_json(status, charge, replayed)

    def _discard_body(self) -> None:
        try:
            self._read_body()
        except _RefusedError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _RefusedError(411, "Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise _RefusedError(400, "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _RefusedError(413, f"body must be at most {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, printing the base URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m platform_tasks.devstack.gateway", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--fail-every", type=int, default=0, metavar="N",
                        help="answer every N-th charge request with 503 (0 = never)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stub = PaymentGatewayStub(options.host, options.port, fail_every=options.fail_every)
    stub.start()
    print(stub.url, flush=True)
    try:
        stop.wait()
    finally:
        stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
