"""Tasks of the ``email`` queue."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from platform_tasks.contracts import SEND_WELCOME_EMAIL, WelcomeEmailArgs
from platform_tasks.tasks._base import PlatformTask, platform_task
from platform_tasks.tasks._mail_once import send_once

WELCOME_SUBJECT = "Welcome aboard"


def welcome_message(recipient: str, sender: str) -> EmailMessage:
    """The welcome mail for ``recipient``, plain text."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = WELCOME_SUBJECT
    message.set_content(
        "Hello,\n\n"
        f"your account for {recipient} is ready. Welcome!\n\n"
        "If you did not sign up, you can ignore this message.\n"
    )
    return message


@platform_task(SEND_WELCOME_EMAIL, WelcomeEmailArgs)
def send_welcome_email(task: PlatformTask, arguments: WelcomeEmailArgs) -> dict[str, Any]:
    """Mail a welcome message to ``user_email``, once per task id."""
    recipient = str(arguments.user_email)
    outcome = send_once(task, welcome_message(recipient, task.settings.smtp_sender))
    return {
        "recipient": recipient,
        "message_id": outcome.message_id,
        "deduplicated": outcome.deduplicated,
    }
