"""mailer.send_message against a real SMTP sink: delivery, and which failures are worth a retry."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.smtp_sink import SmtpSink
from platform_tasks.mailer import PermanentMailError, TransientMailError, send_message
from platform_tasks.settings import Settings, load_settings


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def settings_for(port: int, **extra: str) -> Settings:
    env = {
        "PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0",  # unused by the mailer
        "PLATFORM_TASKS_SMTP_HOST": "127.0.0.1",
        "PLATFORM_TASKS_SMTP_PORT": str(port),
        "PLATFORM_TASKS_SMTP_SENDER": "platform@example.com",
        "PLATFORM_TASKS_SMTP_TIMEOUT": "2",
    }
    env.update({f"PLATFORM_TASKS_{key.upper()}": value for key, value in extra.items()})
    return load_settings(env)


def mail(to: str) -> EmailMessage:
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = "test mail"
    message.set_content("hello\n")
    return message


def test_a_message_is_delivered_with_the_configured_sender(sink: SmtpSink) -> None:
    sent = send_message(settings_for(sink.port), mail("user@example.com"))

    [received] = sink.messages()
    assert received["From"] == "platform@example.com"
    assert received["X-MailFrom"] == "platform@example.com"
    assert received["Message-ID"] == sent.message_id
    assert sent.message_id.endswith("@example.com>")
    assert sent.refused == {}


def test_a_refused_recipient_is_permanent(sink: SmtpSink) -> None:
    with pytest.raises(PermanentMailError, match=r"550.*invalid\.test"):
        send_message(settings_for(sink.port), mail("ghost@invalid.test"))


def test_a_deferred_recipient_is_transient_and_a_retry_gets_through(sink: SmtpSink) -> None:
    settings = settings_for(sink.port)

    with pytest.raises(TransientMailError, match="451"):
        send_message(settings, mail("tempfail-user@example.com"))
    send_message(settings, mail("tempfail-user@example.com"))

    assert len(sink.messages()) == 1


def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(TransientMailError, match="cannot reach"):
        send_message(settings_for(free_port()), mail("user@example.com"))


def test_a_server_that_never_greets_times_out_as_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(TransientMailError, match=r"(?i)timed out"):
            send_message(settings_for(port, smtp_timeout="0.3"), mail("user@example.com"))


def test_starttls_against_a_server_without_it_is_permanent(sink: SmtpSink) -> None:
    with pytest.raises(PermanentMailError, match="STARTTLS"):
        send_message(settings_for(sink.port, smtp_starttls="true"), mail("user@example.com"))


def test_login_against_a_server_without_auth_is_permanent(sink: SmtpSink) -> None:
    settings = settings_for(sink.port, smtp_username="bot", smtp_password="pw")
    with pytest.raises(PermanentMailError, match="AUTH"):
        send_message(settings, mail("user@example.com"))
    assert sink.messages() == []


def test_login_with_the_configured_password_delivers() -> None:
    with SmtpSink(credentials=("bot", "s3cret-pw")) as sink:
        send_message(settings_for(sink.port, smtp_username="bot", smtp_password="s3cret-pw"),
                     mail("user@example.com"))
        with pytest.raises(PermanentMailError, match="535"):
            send_message(settings_for(sink.port, smtp_username="bot", smtp_password="wrong"),
                         mail("user@example.com"))
        assert len(sink.messages()) == 1


def test_a_message_without_recipients_is_permanent(sink: SmtpSink) -> None:
    message = EmailMessage()
    message["Subject"] = "nobody"
    message.set_content("x")

    with pytest.raises(PermanentMailError, match="recipients"):
        send_message(settings_for(sink.port), message)
