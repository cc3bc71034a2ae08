"""The SMTP sink, over real SMTP: it keeps mail, refuses invalid.test, defers tempfail once."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from platform_tasks.devstack.smtp_sink import SmtpSink, read_mail_dir


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(mail_dir=tmp_path / "mail") as running:
        yield running


def message(to: str, subject: str = "hello") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "sender@example.com"
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content("the body\n")
    return mail


def send(sink: SmtpSink, mail: EmailMessage) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
        return client.send_message(mail)


def test_a_message_is_received_and_kept(sink: SmtpSink) -> None:
    assert send(sink, message("someone@example.com")) == {}

    [received] = sink.messages()
    assert received["Subject"] == "hello"
    assert received["X-RcptTo"] == "someone@example.com"
    assert received["X-MailFrom"] == "sender@example.com"
    assert received.get_content() == "the body\n"


def test_messages_are_also_written_to_the_mail_dir(sink: SmtpSink, tmp_path: Path) -> None:
    send(sink, message("a@example.com", "first"))
    send(sink, message("b@example.com", "second"))

    from_disk = read_mail_dir(tmp_path / "mail")

    assert [m["Subject"] for m in from_disk] == ["first", "second"]
    assert not list((tmp_path / "mail").glob("*.tmp"))


@pytest.mark.parametrize(
    "address", ["nobody@invalid.test", "nobody@INVALID.test", "nobody@mx.invalid.test",
                "nobody@invalid.example.com"],
)
def test_a_recipient_on_a_rejected_domain_is_refused_with_550(sink: SmtpSink,
                                                              address: str) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(sink, message(address))

    code, _ = refused.value.recipients[address]
    assert code == 550
    assert sink.messages() == []


def test_a_neighbouring_domain_is_accepted(sink: SmtpSink) -> None:
    assert send(sink, message("somebody@notinvalid.test")) == {}


def test_a_tempfail_recipient_is_deferred_once_then_accepted(sink: SmtpSink) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        send(sink, message("tempfail-1@example.com"))
    assert deferred.value.recipients["tempfail-1@example.com"][0] == 451
    assert sink.messages() == []

    assert send(sink, message("tempfail-1@example.com")) == {}

    assert len(sink.messages()) == 1


def test_each_tempfail_address_is_deferred_on_its_own_first_sighting(sink: SmtpSink) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(sink, message("tempfail-a@example.com"))

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(sink, message("tempfail-b@example.com"))


def test_wait_for_returns_the_matching_message(sink: SmtpSink) -> None:
    send(sink, message("x@example.com", "not this one"))
    send(sink, message("y@example.com", "this one"))

    found = sink.wait_for(lambda m: m["Subject"] == "this one", timeout=2)

    assert found["To"] == "y@example.com"


def test_wait_for_times_out_when_nothing_matches(sink: SmtpSink) -> None:
    send(sink, message("x@example.com"))

    with pytest.raises(TimeoutError, match="1 received"):
        sink.wait_for(lambda m: m["Subject"] == "never", timeout=0.2)


def test_port_zero_binds_a_real_free_port_and_a_restart_keeps_it() -> None:
    with SmtpSink() as one, SmtpSink() as two:
        assert one.port != two.port
        assert one.port > 0
        port = one.port
        one.stop()
        with pytest.raises(ConnectionRefusedError):
            send(one, message("a@example.com"))
        one.start()
        assert one.port == port
        assert send(one, message("a@example.com")) == {}


def test_standalone_run_serves_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "platform_tasks.devstack.smtp_sink", "--port", "0",
         "--mail-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address.startswith("smtp://127.0.0.1:")
        port = int(address.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.send_message(message("cli@example.com", "from the cli test"))
        assert [m["Subject"] for m in read_mail_dir(tmp_path)] == ["from the cli test"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_with_credentials_mail_is_accepted_only_after_logging_in_with_them() -> None:
    with SmtpSink(credentials=("bot", "s3cret-pw")) as sink:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(sink, message("someone@example.com"))
        assert refused.value.recipients["someone@example.com"][0] == 530

        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("bot", "wrong")
            client.login("bot", "s3cret-pw")
            assert client.send_message(message("someone@example.com")) == {}

        assert len(sink.messages()) == 1
