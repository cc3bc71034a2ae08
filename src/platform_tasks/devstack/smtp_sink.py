"""An SMTP sink: a real aiosmtpd server on loopback that keeps every message it accepts.

Two kinds of address let tests take the failure paths: any recipient on ``invalid.test`` or
``invalid.example.com`` is refused with ``550`` (permanent), and a recipient whose local part
starts with ``tempfail`` gets ``451`` (try again later) the first time the sink sees it and is
accepted after that. (The task contracts validate addresses with ``EmailStr``, which refuses
special-use domains such as ``.test`` before anything is sent; ``invalid.example.com`` passes
that check, so a task can be driven into the 550.)

With ``credentials``, the sink offers AUTH (PLAIN and LOGIN, without TLS: it listens on
loopback) and refuses recipients, with ``530``, in a session that has not logged in with them,
so a client configured with a password is seen to use it.

Messages are kept in memory (:meth:`SmtpSink.messages`) and, with ``mail_dir``, written as
``.eml`` files so another process can read them (:func:`read_mail_dir`).

Run on its own with ``python -m platform_tasks.devstack.smtp_sink --port P --mail-dir D``.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from types import FrameType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from platform_tasks.devstack.lifecycle import Service

logger = logging.getLogger(__name__)

#: Recipients on these domains (or their subdomains) are refused with 550.
REJECTED_DOMAINS = frozenset({"invalid.test", "invalid.example.com"})
TEMPFAIL_PREFIX = "tempfail"
#: The name the sink greets with; a fixed one spares aiosmtpd a DNS lookup for the FQDN.
SERVER_HOSTNAME = "smtp-sink.test"


def parse_message(raw: bytes) -> EmailMessage:
    """Bytes of one message -> :class:`EmailMessage` (modern policy, so ``get_content`` works).

    SMTP carries CRLF line ends; the parser would keep them in the body, so they become LF.
    """
    return BytesParser(policy=default_policy).parsebytes(raw.replace(b"\r\n", b"\n"))


def read_mail_dir(mail_dir: Path) -> list[EmailMessage]:
    """Every message a sink wrote to ``mail_dir``, oldest first."""
    return [parse_message(path.read_bytes()) for path in sorted(mail_dir.glob("*.eml"))]


def _is_rejected(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == d or domain.endswith(f".{d}") for d in REJECTED_DOMAINS)


class _BoundController(Controller):
    """A Controller that serves on a socket we bound ourselves.

    aiosmtpd's own ``Controller`` keeps ``port=0`` as given and then connects to port 0 to
    check that the server is up, which fails; binding first tells us the real port before
    the server starts.
    """

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context
        )


class _Handler:
    """aiosmtpd hooks: decide on each recipient, keep each message."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self._sink.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        local, _, domain = address.rpartition("@")
        if _is_rejected(domain):
            return f"550 5.1.1 <{address}>: recipient domain {domain} accepts no mail"
        if local.lower().startswith(TEMPFAIL_PREFIX) and self._sink._first_sighting(address):
            return f"451 4.3.0 <{address}>: temporarily unavailable, try again later"
        # A RCPT hook that answers takes over aiosmtpd's bookkeeping of accepted recipients.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        raw = envelope.original_content
        if raw is None:
            content = envelope.content
            raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else b""
        self._sink._store(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(raw))
        return "250 2.0.0 Message accepted for delivery"


class SmtpSink(Service):
    """The sink server; :meth:`start` it, point the tasks at :attr:`port`, :meth:`stop` it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        mail_dir: Path | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        #: ``(user, password)`` a client must log in with before mail is accepted.
        self.credentials = credentials
        self._port = port
        self.mail_dir = mail_dir
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._raw: list[bytes] = []
        self._seen_tempfail: set[str] = set()
        self._sequence = 0
        self._controller: _BoundController | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Bind (port 0 picks a free one) and serve from aiosmtpd's thread.

        After a :meth:`stop`, starting again reuses the same port, so clients configured
        with it reconnect once the sink is back (an SMTP outage, for tests).
        """
        if self._controller is not None:
            raise RuntimeError("the SMTP sink is already running")
        if self.mail_dir is not None:
            self.mail_dir.mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self._port), family=family)
        self._port = int(sock.getsockname()[1])
        auth: dict[str, Any] = {}
        if self.credentials is not None:
            # AUTH offered without TLS, on loopback only. Not aiosmtpd's auth_required, which
            # warns about exactly that; the RCPT hook refuses a session that did not log in.
            auth = {"authenticator": self._authenticate, "auth_require_tls": False}
        controller = _BoundController(
            _Handler(self), sock, server_hostname=SERVER_HOSTNAME, **auth
        )
        try:
            controller.start()
        except BaseException:
            sock.close()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop serving and close the port; safe to call twice."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def port(self) -> int:
        """The bound port (the requested one until the first :meth:`start`)."""
        return self._port

    # -- what tests look at ------------------------------------------------------------

    def messages(self) -> list[EmailMessage]:
        """Every accepted message, oldest first, with ``X-MailFrom`` and ``X-RcptTo`` added."""
        with self._lock:
            raw = list(self._raw)
        return [parse_message(item) for item in raw]

    def clear(self) -> None:
        """Forget the messages received so far (not the files in ``mail_dir``)."""
        with self._lock:
            self._raw.clear()

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool], timeout: float = 10.0
    ) -> EmailMessage:
        """The first message ``predicate`` accepts, waiting up to ``timeout`` seconds for it.

        Raises :class:`TimeoutError` naming how many messages did arrive.
        """
        deadline = time.monotonic() + timeout
        checked = 0
        with self._arrived:
            while True:
                for raw in self._raw[checked:]:
                    message = parse_message(raw)
                    if predicate(message):
                        return message
                checked = len(self._raw)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no matching message within {timeout} s ({checked} received)"
                    )
                self._arrived.wait(remaining)

    # -- called from the server's thread ---------------------------------------------------

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.credentials is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = (part.encode() for part in self.credentials)
        # Both compared, in constant time, so a wrong user takes as long as a wrong password.
        matches = hmac.compare_digest(auth_data.login, user) & hmac.compare_digest(
            auth_data.password, password
        )
        return AuthResult(success=bool(matches), handled=False)

    def _first_sighting(self, address: str) -> bool:
        with self._lock:
            key = address.lower()
            if key in self._seen_tempfail:
                return False
            self._seen_tempfail.add(key)
            return True

    def _store(self, mail_from: str, recipients: list[str], raw: bytes) -> None:
        # The envelope is not in the message itself (Bcc, for one); keep it as headers.
        envelope = (f"X-MailFrom: {mail_from}\r\nX-RcptTo: {', '.join(recipients)}\r\n")
        stored = envelope.encode("utf-8") + raw
        with self._arrived:
            self._sequence += 1
            sequence = self._sequence
            self._raw.append(stored)
            self._arrived.notify_all()
        if self.mail_dir is not None:
            try:
                self._write(stored, sequence)
            except OSError:
                logger.exception("could not write a received message to %s", self.mail_dir)

    def _write(self, stored: bytes, sequence: int) -> None:
        """Write atomically: a reader globbing ``*.eml`` never sees a half-written file."""
        assert self.mail_dir is not None
        name = f"{time.time_ns()}-{sequence:06d}.eml"
        descriptor, temp_name = tempfile.mkstemp(dir=self.mail_dir, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(stored)
            os.replace(temp_name, self.mail_dir / name)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, printing ``smtp://host:port`` first."""
    parser = argparse.ArgumentParser(
        prog="python -m platform_tasks.devstack.smtp_sink", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--mail-dir", type=Path, default=None,
                        help="also write every message here as a .eml file")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sink = SmtpSink(options.host, options.port, mail_dir=options.mail_dir)
    sink.start()
    host = f"[{sink.host}]" if ":" in sink.host else sink.host
    print(f"smtp://{host}:{sink.port}", flush=True)
    try:
        stop.wait()
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
