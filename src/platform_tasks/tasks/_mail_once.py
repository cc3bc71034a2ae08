"""Send a task's e-mail at most once per task id, however often the message is delivered.

Delivery is at least once: a worker that dies after the SMTP server took the mail but before
the ack gets the task again. A mark in Redis, keyed by the task id (which a Celery retry keeps),
turns that redelivery into a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage

import redis

from platform_tasks import keys, mailer
from platform_tasks.tasks._base import PermanentTaskError, PlatformTask
from platform_tasks.tasks._redis import client_for

logger = logging.getLogger(__name__)

#: Long enough to outlive every redelivery and retry of the task (hours at most).
SENT_MARK_TTL_SECONDS = 4 * 24 * 3600


@dataclass(frozen=True, slots=True)
class MailOutcome:
    message_id: str
    #: True when an earlier run of the same task id already sent the mail.
    deduplicated: bool


def send_once(task: PlatformTask, message: EmailMessage) -> MailOutcome:
    """Send ``message`` unless this task id already did; retry or fail as the error says."""
    task_id: str | None = task.request.id
    settings = task.settings
    mark = keys.email_sent(task_id) if task_id else None
    if mark is not None:
        try:
            earlier = client_for(settings).get(mark)
        except redis.RedisError as error:
            # Sending without the check could send twice; waiting costs only a little delay.
            task.retry_transient(error)
        if earlier is not None:
            logger.info("task %s already sent its mail (%s); not sending again", task_id, earlier)
            return MailOutcome(message_id=str(earlier), deduplicated=True)
    try:
        sent = mailer.send_message(settings, message)
    except mailer.TransientMailError as error:
        task.retry_transient(error)
    except mailer.PermanentMailError as error:
        raise PermanentTaskError(str(error)) from error
    if mark is not None:
        try:
            client_for(settings).set(mark, sent.message_id, ex=SENT_MARK_TTL_SECONDS)
        except redis.RedisError:
            # The mail is out: failing the task now would retry it and send a second copy.
            logger.exception("sent %s but could not record it; a redelivery would resend",
                             sent.message_id)
    return MailOutcome(message_id=sent.message_id, deduplicated=False)
