"""The lifecycle lines written from a task's pre-encoded identity are the pipeline's lines.

``task_context`` redacts and encodes a task's identity once and splices it into its
received/started/succeeded lines; each must be byte for byte what the full pipeline writes
(the timestamp aside), redaction included, and a task that binds its own context must still
see it on the line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import structlog
    from platform_tasks.observability import bound_context
    from platform_tasks.observability.logging import (
        SplicedLine, configure_logging, emit, encode_fields)
    from platform_tasks.observability.task_context import _FIELD_NAMES, runtime_field
    from platform_tasks.settings import load_settings

    configure_logging(load_settings(), process="worker")

    def identity():
        return {"task_id": "t-1", "task_name": "platform_tasks.default.add_numbers",
                "queue": "default", "retries": 2, "worker": "default-1@pod",
                "correlation_id": "order for ann@example.com", "parent_id": None,
                "root_id": "r-1"}

    def line(event, fields_first=False):
        return SplicedLine("platform_tasks.task", "info", event, _FIELD_NAMES,
                           fields_first=fields_first)

    # received: the fields themselves, before the event
    emit("platform_tasks.task", "info", "task_received", identity())
    assert line("task_received", fields_first=True).write(encode_fields(identity()))
    # started / succeeded: the identity bound in the context, as task_prerun binds it
    bound_context.bind_identity(identity())
    encoded = encode_fields(identity())
    emit("platform_tasks.task", "info", "task_started", {})
    assert line("task_started").write(encoded)
    emit("platform_tasks.task", "info", "task_succeeded", {"runtime_ms": 1.5})
    assert line("task_succeeded").write(encoded, runtime_field(1.5))
    # a task that bound a field of its own: no shortcut, the caller logs the long way
    structlog.contextvars.bind_contextvars(order="o-7")
    assert not line("task_succeeded").write(encoded, runtime_field(1.5))
    structlog.get_logger("platform_tasks.tasks").info("charged")
    bound_context.clear()
    structlog.get_logger("platform_tasks.tasks").info("after the task")
    """
)

ENV = {"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0", "PLATFORM_TASKS_LOG_FORMAT": "json"}


def test_spliced_lines_equal_the_pipelines_own() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=ENV, capture_output=True,
                          text=True, timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 8, done.stdout + done.stderr
    inside, after = json.loads(lines[6]), json.loads(lines[7])
    # the task's own field and its identity, identity first; nothing once cleared
    assert list(inside)[:3] == ["event", "task_id", "task_name"]
    assert inside["order"] == "o-7"
    assert inside["root_id"] == "r-1"
    assert not {"order", "task_id"} & set(after)
    for slow, fast in zip(lines[:6:2], lines[1:6:2], strict=True):
        slow_line, fast_line = json.loads(slow), json.loads(fast)
        assert list(slow_line) == list(fast_line)  # the same keys in the same order
        slow_line.pop("timestamp")
        fast_line.pop("timestamp")
        assert slow_line == fast_line
        assert slow.split('"timestamp"')[0] == fast.split('"timestamp"')[0]
    assert "ann@example.com" not in done.stdout
    assert json.loads(lines[1])["correlation_id"] != "order for ann@example.com"


SAMPLE_VALUES: list[object] = [
    None, 0, 7, -3, 2**70, "", "default", "platform_tasks.default.add_numbers",
    "default-1@pod-7f9", "ann@example.com", "order for ann@example.com",
    "4111 1111 1111 1111", "redis://app:pa55word@h:6379/0", "s3cr3t-passw0rd in here",
    "quote \" and backslash \\", "naïve ünïcode ✓", "tab\there\nnewline",
    "12345678-1234-1234-1234-123456789012", "deadbeef-dead-beef-dead-beefdeadbeef",
    "0f0f0f0f-1111-2222-3333-444455556666", "0F0F0F0F-1111-2222-3333-44445555666G",
]
SAMPLE_KEYS = ["task_id", "task_name", "queue", "retries", "worker", "correlation_id",
               "parent_id", "root_id", "token", "email", "hostname", "level"]


def test_identity_fields_encode_as_the_redactor_and_encoder_would() -> None:
    import random

    from platform_tasks.observability.logging import _encode_flat, _encode_plain_fields
    from platform_tasks.observability.redaction import Redactor

    chooser = random.Random(20261201)
    # No secret that could hide in a UUID, then one that can (the UUIDs take the long way).
    for secrets in (("s3cr3t-passw0rd",), ("s3cr3t-passw0rd", "dead-beef")):
        fast_redactor, slow_redactor = Redactor(secrets), Redactor(secrets)
        fragments: dict[tuple[str, str], str] = {}
        for _ in range(3000):
            keys = chooser.sample(SAMPLE_KEYS, chooser.randint(1, 8))
            fields = {key: chooser.choice(SAMPLE_VALUES) for key in keys}
            expected = _encode_flat(slow_redactor(None, "info", dict(fields)))[1:-1]
            assert _encode_plain_fields(fast_redactor, fragments, dict(fields)) == expected


def test_other_values_are_left_to_the_general_way() -> None:
    from platform_tasks.observability.logging import _encode_plain_fields
    from platform_tasks.observability.redaction import Redactor

    for value in (True, 1.5, ["a"], {"a": 1}):
        assert _encode_plain_fields(Redactor(), {}, {"correlation_id": value}) is None


def test_a_runtime_on_a_line_encodes_as_json_would() -> None:
    from platform_tasks.observability.logging import _encode_flat
    from platform_tasks.observability.task_context import runtime_field

    for value in (0.0, 1.5, 0.001, 2.25, 1e-7, 123456789.123, 1e300, round(1 / 3, 3)):
        assert runtime_field(value) == _encode_flat({"runtime_ms": value})[1:-1]


CONTEXT_PROGRAM = textwrap.dedent(
    """
    import logging
    import threading

    import structlog
    from platform_tasks.observability import bound_context
    from platform_tasks.observability.logging import (
        SplicedLine, configure_logging, encode_fields)
    from platform_tasks.observability.task_context import _FIELD_NAMES
    from platform_tasks.settings import load_settings

    configure_logging(load_settings(), process="worker")

    def identity(task_id):
        return {"task_id": task_id, "task_name": "t", "queue": "q", "retries": 0,
                "worker": "w", "correlation_id": None, "parent_id": None, "root_id": task_id}

    # a stdlib record inside a task carries the identity
    bound_context.bind_identity(identity("a-1"))
    logging.getLogger("platform_tasks.tasks").warning("stdlib inside")
    # code that binds an identity key overrides it, so no pre-encoded line may be written
    structlog.contextvars.bind_contextvars(queue="overridden")
    assert not SplicedLine("platform_tasks.task", "info", "task_succeeded",
                           _FIELD_NAMES).write(encode_fields(identity("a-1")))
    structlog.get_logger("platform_tasks.tasks").info("bound over")
    bound_context.clear()

    # two threads, two identities: each line has its own thread's
    ready = threading.Barrier(2)

    def run(task_id):
        bound_context.bind_identity(identity(task_id))
        ready.wait()
        structlog.get_logger("platform_tasks.tasks").info("in thread", mine=task_id)
        ready.wait()
        bound_context.clear()

    threads = [threading.Thread(target=run, args=(task_id,)) for task_id in ("b-1", "b-2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    """
)


def test_identity_reaches_stdlib_records_yields_to_code_and_stays_in_its_thread() -> None:
    done = subprocess.run([sys.executable, "-c", CONTEXT_PROGRAM], env=ENV, capture_output=True,
                          text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    stdlib, bound_over, *threaded = lines
    assert stdlib["event"] == "stdlib inside"
    assert stdlib["task_id"] == "a-1"
    assert bound_over["queue"] == "overridden"
    assert bound_over["task_id"] == "a-1"
    assert sorted((line["mine"], line["task_id"]) for line in threaded) == [
        ("b-1", "b-1"), ("b-2", "b-2")]


IDENTITY_PROGRAM = textwrap.dedent(
    """
    import random
    import uuid
    from unittest import mock

    from platform_tasks.observability import logging as platform_logging
    from platform_tasks.observability.logging import configure_logging, encode_fields
    from platform_tasks.observability.task_context import encode_identity
    from platform_tasks.settings import load_settings

    # Mostly what the fast way takes (UUIDs, None), then ids it must leave alone: 36
    # characters that are no UUID (an e-mail address, a quote), upper case, others.
    uuids = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(6)]
    uuids.append(uuids[0].upper())
    odd_ids = ["ann@example.com-00000000000000000000", 'quote "q" 12345678901234567890123456',
               "0F0F0F0F-1111-2222-3333-44445555666G", "t-1", "order for ann@example.com",
               "redis://app:pa55word@h:6379/0", "", 7, True, mock.ANY]
    names = ["platform_tasks.default.add_numbers", "default-1@pod", "ann@example.com",
             "tab\there", None, 1, True, 1.0, ["a"], {"a": 1}]
    chooser = random.Random(20261207)

    def an_id():
        return chooser.choice(uuids + [None]) if chooser.random() < 0.8 else chooser.choice(
            odd_ids)

    def plain(values):
        return chooser.choice(values[:5]) if chooser.random() < 0.8 else chooser.choice(values)

    spliced = 0
    original = platform_logging.IdSplicing.repeated

    def counted(self, key, fields):
        global spliced
        spliced += 1
        return original(self, key, fields)

    platform_logging.IdSplicing.repeated = counted
    configure_logging(load_settings(), process="worker")
    for _ in range(4000):
        task_id = an_id()
        fields = {"task_id": task_id, "task_name": plain(names),
                  "queue": plain(["default", "pa55word", None, "email", "media", 1, True]),
                  "retries": plain([0, 3, 0, 1, 2, True, 1.0, False, -0.0]),
                  "worker": plain(names), "correlation_id": an_id(), "parent_id": an_id(),
                  "root_id": task_id if chooser.random() < 0.5 else an_id()}
        before = dict(fields)
        fast = encode_identity(fields)
        assert fields == before, "encode_identity consumed its fields"
        assert fast == encode_fields(dict(fields)), (fields, fast)
    print("spliced", "many" if spliced > 800 else spliced if spliced else "none", flush=True)
    """
)


def test_encoded_identity_is_what_the_general_encoding_makes() -> None:
    # Secrets configured as the deployments have them; the second run adds one that could
    # hide inside a UUID, so that no id is spliced there.
    for extra, spliced in (({}, "many"), ({"PLATFORM_TASKS_SMTP_PASSWORD": "dead-beef"}, "none")):
        env = {**ENV, "PLATFORM_TASKS_REDIS_PASSWORD": "pa55word", **extra}
        done = subprocess.run([sys.executable, "-c", IDENTITY_PROGRAM], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["spliced", spliced]


RECEIVERS_PROGRAM = textwrap.dedent(
    """
    import uuid
    from types import SimpleNamespace

    from celery import signals
    from platform_tasks.app import create_app
    from platform_tasks.observability import bound_context, task_context
    from platform_tasks.observability.logging import configure_logging, emit
    from platform_tasks.settings import load_settings

    settings = load_settings()
    configure_logging(settings, process="worker")
    task_context.install()
    app = create_app(settings)
    app.loader.import_default_modules()
    task = app.tasks["platform_tasks.default.add_numbers"]

    class Consumer:  # the sender of task_received: hashable, as Celery's consumer is
        hostname = "default-1@pod"

    consumer = Consumer()

    def received(task_id):
        message = {"id": task_id, "task": task.name, "retries": 0, "root_id": task_id,
                   "parent_id": None, "platform_tasks_correlation_id": str(uuid.uuid4())}
        request = SimpleNamespace(id=task_id, name=task.name, request_dict=message,
                                  hostname=consumer.hostname,
                                  delivery_info={"routing_key": "default"})
        signals.task_received.send(sender=consumer, request=request)
        return message

    def started(message):
        task.push_request(id=message["id"], task=task.name, retries=0,
                          hostname=consumer.hostname, delivery_info={"routing_key": "default"},
                          root_id=message["root_id"], parent_id=None,
                          platform_tasks_correlation_id=message["platform_tasks_correlation_id"])
        signals.task_prerun.send(sender=task, task_id=message["id"], task=task)

    def ended(message):
        signals.task_success.send(sender=task, result=2)
        signals.task_postrun.send(sender=task, task_id=message["id"], task=task, state="SUCCESS")
        task.pop_request()

    outer = received(str(uuid.uuid4()))
    started(outer)
    inner = received(str(uuid.uuid4()))  # a task run eagerly inside the outer one
    started(inner)
    ended(inner)
    ended(outer)
    print("---", flush=True)
    # What the general pipeline writes for the same events, from the fields the lines carry.
    import json, sys
    for text in sys.stdin.read().splitlines():
        line = json.loads(text)
        identity = {key: value for key, value in line.items() if key in task_context._FIELD_NAMES}
        if line["event"] == "task_received":
            emit("platform_tasks.task", "info", "task_received", dict(identity))
            continue
        bound_context.bind_identity(identity)
        extra = {"runtime_ms": line["runtime_ms"]} if "runtime_ms" in line else {}
        emit("platform_tasks.task", "info", line["event"], extra)
        bound_context.clear()
    """
)


def test_the_receivers_lines_are_the_pipelines_and_an_eager_run_keeps_its_outer_task() -> None:
    first = subprocess.run([sys.executable, "-c", RECEIVERS_PROGRAM], env=ENV, input="",
                           capture_output=True, text=True, timeout=60, check=True)
    fast = first.stdout.split("---\n")[0].splitlines()
    second = subprocess.run([sys.executable, "-c", RECEIVERS_PROGRAM], env=ENV,
                            input="\n".join(fast), capture_output=True, text=True, timeout=60,
                            check=True)
    slow = second.stdout.split("---\n")[1].splitlines()
    events = [json.loads(text) for text in fast]
    assert [(line["event"], line["task_id"]) for line in events] == [
        ("task_received", events[0]["task_id"]), ("task_started", events[0]["task_id"]),
        ("task_received", events[2]["task_id"]), ("task_started", events[2]["task_id"]),
        ("task_succeeded", events[2]["task_id"]), ("task_succeeded", events[0]["task_id"]),
    ]
    assert all(isinstance(line["runtime_ms"], float) for line in events[4:])
    assert len(slow) == len(fast)
    for fast_text, slow_text in zip(fast, slow, strict=True):
        # byte for byte, but for the time and the process id of the other interpreter
        assert fast_text.split('"timestamp"')[0] == slow_text.split('"timestamp"')[0]
        assert fast_text.rsplit('"pid"')[0].split('"process"')[1] == \
            slow_text.rsplit('"pid"')[0].split('"process"')[1]
