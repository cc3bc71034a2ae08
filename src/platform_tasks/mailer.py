"""Hand one e-mail to the configured SMTP server, and say whether a failure is worth a retry.

Both the welcome mail and the daily report go through :func:`send_message`. It turns every way
sending can fail into one of two errors, so a task only has to choose between retrying
(:class:`TransientMailError`) and failing fast (:class:`PermanentMailError`).
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid

from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)


class MailError(Exception):
    """Sending a message failed."""


class TransientMailError(MailError):
    """The server or the network may accept the message later: retry."""


class PermanentMailError(MailError):
    """The message will never be accepted as it is (5xx reply, bad address, bad config)."""


@dataclass(frozen=True, slots=True)
class SentMail:
    """What the SMTP server accepted."""

    message_id: str
    #: Recipients the server refused while accepting the others: ``address -> (code, reply)``.
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {message}".strip()


def _is_transient_code(code: int) -> bool:
    return 400 <= code < 500


def _classify(error: BaseException) -> MailError:
    """Map what smtplib and the socket layer raise onto retry / do not retry."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        # Every recipient was refused. One permanent refusal means a retry cannot deliver to
        # everyone, so only an all-4xx refusal is worth retrying.
        replies = {addr: (code, _reply(code, text)) for addr, (code, text) in
                   error.recipients.items()}
        described = "; ".join(f"{addr}: {reply}" for addr, (_, reply) in replies.items())
        if replies and all(_is_transient_code(code) for code, _ in replies.values()):
            return TransientMailError(f"recipient deferred by the SMTP server: {described}")
        return PermanentMailError(f"recipient refused by the SMTP server: {described}")
    if isinstance(error, smtplib.SMTPResponseException):
        # Covers sender refused, DATA refused, a bad greeting, HELO and AUTH failures.
        reply = _reply(error.smtp_code, error.smtp_error)
        if _is_transient_code(error.smtp_code):
            return TransientMailError(f"SMTP server deferred the message: {reply}")
        return PermanentMailError(f"SMTP server rejected the message: {reply}")
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return TransientMailError(f"SMTP server closed the connection: {error}")
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return PermanentMailError(f"SMTP server lacks a required extension: {error}")
    if isinstance(error, smtplib.SMTPException):
        # e.g. "No suitable authentication method found": configuration, not luck.
        return PermanentMailError(f"SMTP session failed: {error}")
    if isinstance(error, ssl.SSLCertVerificationError):
        return PermanentMailError(f"SMTP server certificate not trusted: {error}")
    if isinstance(error, OSError):
        # Refused, reset, unreachable, timed out, DNS: the network may recover.
        return TransientMailError(f"cannot reach the SMTP server: {error!r}")
    if isinstance(error, ValueError | UnicodeError):
        # smtplib raises these for a message without recipients or an unencodable address.
        return PermanentMailError(f"message cannot be sent: {error}")
    return PermanentMailError(f"unexpected error while sending mail: {error!r}")


def _ensure_message_id(message: EmailMessage, sender: str) -> str:
    existing = message["Message-ID"]
    if existing:
        return str(existing)
    # The sender's domain, not socket.getfqdn(): a DNS lookup per mail is slow in a pod.
    message_id = make_msgid(domain=sender.rpartition("@")[2])
    message["Message-ID"] = message_id
    return message_id


def _close(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        _close(client)


def send_message(settings: Settings, message: EmailMessage) -> SentMail:
    """Send ``message`` through ``settings``' SMTP server and return its ``Message-ID``.

    ``From`` defaults to ``settings.smtp_sender``. Raises :class:`TransientMailError` or
    :class:`PermanentMailError`; the original exception is the ``__cause__``.
    """
    if not any(message.get_all(field) for field in ("To", "Cc", "Bcc")):
        # Checked here: smtplib would connect first and then report an empty refusal.
        raise PermanentMailError("message has no recipients (no To, Cc or Bcc)")
    if not message["From"]:
        message["From"] = settings.smtp_sender
    message_id = _ensure_message_id(message, settings.smtp_sender)
    try:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                              timeout=settings.smtp_timeout)
    except Exception as error:
        raise _classify(error) from error
    try:
        if settings.smtp_starttls:
            client.starttls(context=ssl.create_default_context())
        if settings.smtp_username is not None:
            password = settings.smtp_password
            client.login(
                settings.smtp_username,
                password.get_secret_value() if password is not None else "",
            )
        refused = client.send_message(message, from_addr=settings.smtp_sender)
    except Exception as error:
        _close(client)
        raise _classify(error) from error
    # Not ``with SMTP(...)``: its exit raises on an odd QUIT reply, and a failure reported
    # after the server took the message would make the task retry and send it twice.
    _quit(client)
    details = {addr: (code, _reply(code, text)) for addr, (code, text) in refused.items()}
    if details:
        # The others already have the mail; failing now would make a retry resend it to them.
        logger.warning("SMTP server refused some recipients of %s: %s", message_id, details)
    return SentMail(message_id=message_id, refused=details)


__all__ = [
    "MailError",
    "PermanentMailError",
    "SentMail",
    "TransientMailError",
    "send_message",
]
