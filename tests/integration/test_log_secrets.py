"""A full run's logs hold no secret and no personal data from the work it did.

The local stack runs with every secret the platform knows configured (Redis, Sentinel, SMTP
passwords, Flower's login) and at DEBUG, the level that logs most (message bodies included).
Every task runs, with retries, failures, a revoke and a rejected message, through the workers
and through the CLI; the stack stops; then every log file of every process is read.

No canvas is sent from this process: Celery subscribes to a group's results when it sends one,
and their garbage collection after the stack is gone would retry the dead broker for minutes.
Canvases are in the e2e tests, on the session's stack.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.smtp_sink import SmtpSink
from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer

DEADLINE = 90.0
SMTP_USER = "platform-mailer"


def personal_data(tag: str) -> dict[str, str]:
    """Addresses and card numbers that go into the workload, unique to this run."""
    return {
        "welcome": f"alice.{tag}@example.com",
        "deferred": f"tempfail.bob.{tag}@example.com",  # the SMTP sink defers it once (451)
        "refused": f"carol.{tag}@invalid.example.com",  # the SMTP sink refuses it (550)
        "report": f"dave.{tag}@example.com",
        "scheduled_report": f"ops.{tag}@example.com",  # beat's schedule, from the settings
        "cli": f"erin.{tag}@example.com",
        # Test card numbers (Luhn-valid), written as people write them.
        "card_spaced": "4111 1111 1111 1111",
        "card_dashed": "5555-5555-5555-4444",
        "card_plain": "378282246310005",
    }


def cli(stack: DevStack, log_dir: Path, name: str, argv: list[str],
        env: dict[str, str] | None = None) -> int:
    """Run ``platform-tasks argv``; its log stream (stderr) becomes ``cli-<name>.log``.

    Stdout is the command's answer (a task's result, which may hold its recipient); the logs
    are what must stay clean.
    """
    done = subprocess.run(
        [sys.executable, "-m", "platform_tasks", *argv],
        env=env if env is not None else stack.env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    (log_dir / f"cli-{name}.log").write_text(done.stderr)
    return done.returncode


def flower_get(stack: DevStack, path: str, auth: str) -> int:
    assert stack.flower_port is not None
    token = base64.b64encode(auth.encode()).decode()
    deadline = time.monotonic() + DEADLINE
    while True:
        connection = http.client.HTTPConnection(LOOPBACK, stack.flower_port, timeout=10)
        try:
            connection.request("GET", path, headers={"Authorization": f"Basic {token}"})
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            connection.close()


def run_workload(stack: DevStack, data: dict[str, str], log_dir: Path) -> None:
    assert stack.gateway is not None
    Image.new("RGB", (80, 60), "navy").save(stack.media_root / "photo.png")
    with TaskProducer(stack.settings()) as producer:

        def payment(card: str, currency: str = "USD") -> str:
            return producer.enqueue(
                "platform_tasks.payments.process_payment", queue="payments",
                kwargs={"transaction_id": card, "amount": "12.50", "currency": currency,
                        "idempotency_key": f"secrets-{uuid.uuid4().hex}"},
            )

        def welcome(address: str) -> str:
            return producer.enqueue("platform_tasks.email.send_welcome_email", queue="email",
                                    kwargs={"user_email": address})

        stack.gateway.fail_next(1)  # one payment gets a 503 and retries
        expected = {
            producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                             args=[2, 3]): "SUCCESS",
            producer.enqueue("platform_tasks.default.sum_numbers", queue="default",
                             kwargs={"numbers": [1, 2, 3]}): "SUCCESS",
            producer.enqueue("platform_tasks.default.send_daily_report", queue="default",
                             kwargs={"recipient": data["report"]}): "SUCCESS",
            welcome(data["welcome"]): "SUCCESS",
            welcome(data["deferred"]): "SUCCESS",  # after a retry
            welcome(data["refused"]): "FAILURE",
            payment(data["card_spaced"]): "SUCCESS",
            payment(data["card_dashed"]): "SUCCESS",
            payment(data["card_plain"], currency="XXX"): "FAILURE",  # declined
            producer.enqueue("platform_tasks.media.make_thumbnail", queue="media",
                             kwargs={"source": "photo.png", "sizes": [[32, 24]]}): "SUCCESS",
            producer.enqueue("platform_tasks.media.make_thumbnail", queue="media",
                             kwargs={"source": "missing.png", "sizes": [8]}): "FAILURE",
        }
        held = producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                                args=[1, 1], countdown=5)
        producer.app.send_task("platform_tasks.default.not_a_task", args=[data["welcome"]],
                               queue="default")

        assert cli(stack, log_dir, "revoke", ["revoke", held]) == 0
        assert cli(stack, log_dir, "enqueue", [
            "enqueue", "platform_tasks.email.send_welcome_email", "--queue", "email",
            "--kwargs", json.dumps({"user_email": data["cli"]}), "--wait", str(DEADLINE),
        ]) == 0
        # Refused by the contract: the producer's error names the argument, not its value.
        assert cli(stack, log_dir, "enqueue-refused", [
            "enqueue", "platform_tasks.payments.process_payment", "--queue", "payments",
            "--kwargs", json.dumps({"transaction_id": data["card_spaced"], "amount": "-1",
                                    "currency": "USD", "idempotency_key": "refused-key"}),
        ]) == 2
        assert cli(stack, log_dir, "queues", ["queues"]) == 0

        for task_id, state in expected.items():
            outcome = producer.wait(task_id, timeout=DEADLINE)
            assert outcome.state == state, outcome
            if state == "FAILURE":
                assert cli(stack, log_dir, f"status-{task_id}", ["status", task_id]) == 0
        assert producer.wait(held, timeout=DEADLINE).state == "REVOKED"

    # Failure paths of the CLI that print the error straight to stderr.
    env = stack.env
    assert cli(stack, log_dir, "broker-down", ["queues"], env={
        **env, "PLATFORM_TASKS_SENTINELS": f"{LOOPBACK}:{free_port()}",
        "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT": "1",
    }) == 1
    url = f"redis://:{quote(env['PLATFORM_TASKS_REDIS_PASSWORD'], safe='')}@{LOOPBACK}:1/0"
    assert cli(stack, log_dir, "bad-config", ["queues"],
               env={**env, "PLATFORM_TASKS_REDIS_URL": url}) == 2

    # Flower, logged in and with a wrong password.
    assert stack.flower_auth is not None
    user, password = stack.flower_auth
    assert flower_get(stack, "/api/workers?refresh=1", f"{user}:{password}") == 200
    assert flower_get(stack, "/api/tasks", f"{user}:not-{password}") == 401


def secret_variants(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


def test_no_log_of_a_full_run_holds_a_secret_a_card_number_or_an_address(
    redis_server_binary: Path, tmp_path: Path
) -> None:
    data = personal_data(uuid.uuid4().hex[:10])
    # Characters that URLs and shells treat specially, so encoded forms are searched too.
    smtp_password = f"Sm+tp/Pa@ss w0rd!{secrets.token_hex(4)}"
    # The stack's own sink takes no login: this one, with the password, stands in for it.
    with SmtpSink(LOOPBACK, 0, credentials=(SMTP_USER, smtp_password)) as sink:
        stack = DevStack(
            tmp_path / "run", beat=True, flower=True, smtp=False, gateway_fail_every=0,
            extra_env={
                "PLATFORM_TASKS_SMTP_HOST": LOOPBACK,
                "PLATFORM_TASKS_SMTP_PORT": str(sink.port),
                "PLATFORM_TASKS_SMTP_USERNAME": SMTP_USER,
                "PLATFORM_TASKS_SMTP_PASSWORD": smtp_password,
                "PLATFORM_TASKS_REPORT_RECIPIENT": data["scheduled_report"],
                "PLATFORM_TASKS_LOG_LEVEL": "DEBUG",
            },
        )
        with stack:
            stack.wait_for_workers(timeout=DEADLINE)
            configured = {
                "redis password": stack.env["PLATFORM_TASKS_REDIS_PASSWORD"],
                "sentinel password": stack.env["PLATFORM_TASKS_SENTINEL_PASSWORD"],
                "smtp password": smtp_password,
                "flower password": stack.flower_auth[1] if stack.flower_auth else "",
            }
            assert all(configured.values())
            run_workload(stack, data, stack.log_dir)
        # Every mail went through a session logged in with the SMTP password.
        assert len(sink.messages()) >= 4

    searched: dict[str, set[str]] = {
        name: secret_variants(value) for name, value in configured.items()
    }
    # What an SMTP client sends for AUTH PLAIN, should a debug log print the conversation.
    searched["smtp password"].add(
        base64.b64encode(f"\0{SMTP_USER}\0{smtp_password}".encode()).decode()
    )
    for name, value in data.items():
        forms = {value.lower()}
        if name.startswith("card"):
            forms.add("".join(char for char in value if char.isdigit()))
        searched[name] = forms

    logs = sorted(path for path in stack.log_dir.rglob("*") if path.is_file())
    names = {path.name for path in logs}
    for process in ("worker-default", "worker-email", "worker-media", "worker-payments",
                    "beat", "flower", "cli-enqueue", "cli-broker-down", "cli-bad-config"):
        assert f"{process}.log" in names, sorted(names)
    found: list[tuple[str, str]] = []
    for path in logs:
        text = path.read_text(errors="replace")
        lowered = text.lower()
        for name, forms in searched.items():
            if any(form in text or form.lower() in lowered for form in forms):
                found.append((path.name, name))
    assert found == [], f"secrets or personal data in the logs (file, what): {found}"

    # Not vacuous: the data was logged, redacted, where Celery's debug lines print messages.
    everything = "\n".join(path.read_text(errors="replace") for path in logs)
    assert "[card]" in everything
    assert "c***@invalid.example.com" in everything
    assert "a***@example.com" in everything
