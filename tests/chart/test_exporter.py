"""celery-exporter, configured exactly as the chart configures it, against the real platform.

Given the chart rendered from ci/flower-exporter-values.yaml, the exporter container's args
are resolved as the kubelet would: its ``env`` read from the rendered Secret (whose keys hold
the local stack's passwords: the keys the workers read theirs from) and ``$(VAR)`` expanded.
Only the Sentinels' pod DNS names become the local stack's Sentinel addresses, and the listen
address a free loopback port; every other flag stays as rendered. The stack's Redis nodes get
the chart's ACL user (the name and rules the Redis pods' init script writes), so the exporter
logs in as the chart makes it log in, and the workers send task events as the chart tells them.

When a task has run on every queue, the exporter (PyPI ``prometheus-exporter-celery``, the
release of the chart's image tag, in a venv of its own) reports a length and a live worker
for every queue, and each task as succeeded on its queue. Where docs/metrics.md says its
series fall short, this shows it: a task published without a task-sent event is filed under
queue "celery", and its plain ``LLEN`` misses priority sub-lists and unacknowledged messages
that the platform's monitor counts.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from chart_tools import Render, env_of
from PIL import Image
from pod_emulation import Objects, container_env, expand, plan_pods
from prometheus_client.parser import text_string_to_metric_families

from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer
from platform_tasks.queues import QUEUE_NAMES, QUEUES
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

CASE = "flower-exporter"
EXPORTER = "platform-tasks-exporter"
REDIS = "platform-tasks-redis"
#: Generous: two cores, and the exporter learns about tasks from an event stream.
DEADLINE = 60.0
#: What the image's entrypoint (``python /app/cli.py``) runs.
ENTRYPOINT = "from src.cli import cli; cli()"

#: One task per queue that succeeds against the stack's SMTP sink and gateway stub.
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("platform_tasks.default.add_numbers", {"args": [2, 3]}),
    "email": ("platform_tasks.email.send_welcome_email",
              {"kwargs": {"user_email": "exporter-reader@example.com"}}),
    "payments": ("platform_tasks.payments.process_payment",
                 {"kwargs": {"transaction_id": "tx-exporter", "amount": "4.00",
                             "currency": "USD", "idempotency_key": "exporter-payment"}}),
    "media": ("platform_tasks.media.make_thumbnail",
              {"kwargs": {"source": "exporter.png", "sizes": [16]}}),
}
#: The exporter labels a worker by the part of its node name after the "@". The workers are
#: "<queue>@%h" (in a pod, its name); on this one host all four share the host's name.
HOSTNAME = socket.gethostname()

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """``GET /metrics`` from a loopback port, as samples by name and labels."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=15)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, body[:500]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sample of ``metric`` with exactly ``labels``, None when there is none."""
    return samples.get((metric, frozenset(labels.items())))


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``metric`` that carry ``labels`` (and maybe others)."""
    wanted = set(labels.items())
    return sum(v for (name, have), v in samples.items() if name == metric and wanted <= have)


@dataclass
class Exporter:
    """The running exporter, the stack it watches, and its rendered and local args."""

    stack: DevStack
    process: ManagedProcess
    rendered_args: list[str]
    args: list[str]
    port: int
    health_path: str

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=15)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def scrape(self) -> Samples:
        return scrape(self.port)

    def monitor(self) -> Samples:
        assert self.stack.monitor_port is not None
        return scrape(self.stack.monitor_port)

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")[-4000:]

    def eventually(self, probe: Callable[[], T | None], what: str) -> T:
        """Call ``probe`` until it returns something other than None."""
        deadline = time.monotonic() + DEADLINE
        last: object = None
        while True:
            assert self.process.alive, f"the exporter exited:\n{self.log()}"
            try:
                found = probe()
                last = "answered, not yet as expected"
            except (OSError, AssertionError) as error:  # not listening, or not 200 yet
                found, last = None, error
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {DEADLINE:g}s (last: {last!r})\n"
                                     f"--- exporter log:\n{self.log()}")
            time.sleep(1.0)


# -- from the render to a command line -------------------------------------------------------


def container(render: Render, deployment: str) -> dict[str, Any]:
    [only] = render.named("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def redis_init_env(render: Render) -> dict[str, str]:
    """The plain values of the Redis pods' init container (what writes the configs)."""
    spec = render.named("StatefulSet", REDIS)["spec"]["template"]["spec"]
    return {name: entry["value"] for name, entry in env_of(spec["initContainers"][0]).items()
            if "value" in entry}


def objects_with_stack_passwords(render: Render, stack: DevStack) -> Objects:
    """The rendered Secrets, the keys the workers read their passwords from holding the
    stack's passwords (so whatever reads those keys gets the stack's)."""
    objects = Objects(render.objects)
    worker_env = env_of(container(render, "platform-tasks-worker-default"))
    for name, password in (("PLATFORM_TASKS_REDIS_PASSWORD", stack.topology.password),
                           ("PLATFORM_TASKS_SENTINEL_PASSWORD", stack.topology.sentinel_password)):
        ref = worker_env[name]["valueFrom"]["secretKeyRef"]
        objects.secrets[ref["name"]][ref["key"]] = password.encode()
    return objects


def exporter_command(
    render: Render, stack: DevStack, port: int
) -> tuple[list[str], list[str], dict[str, str]]:
    """The rendered args, and the args and env the exporter runs with against ``stack``."""
    [plan] = [p for p in plan_pods(render) if p.owner == f"Deployment/{EXPORTER}"]
    spec = plan.container("exporter")
    assert "command" not in spec, "the chart runs the image's entrypoint"
    env, _ = container_env(plan, spec, objects_with_stack_passwords(render, stack))
    rendered = list(spec["args"])

    # The chart's Sentinels (pod DNS names) are the stack's, in order; nothing else moves.
    workers_env = env_of(container(render, "platform-tasks-worker-default"))
    chart_sentinels = workers_env["PLATFORM_TASKS_SENTINELS"]["value"].split(",")
    local_sentinels = [f"{host}:{p}" for host, p in stack.topology.sentinel_addresses]
    assert len(chart_sentinels) == len(local_sentinels)
    listen = {"--host=0.0.0.0": f"--host={LOOPBACK}",
              f"--port={spec['ports'][0]['containerPort']}": f"--port={port}"}
    assert set(listen) <= set(rendered), rendered
    args = []
    for word in rendered:
        if word in listen:
            args.append(listen[word])
            continue
        word = expand(word, env)
        for chart_address, local_address in zip(chart_sentinels, local_sentinels, strict=True):
            word = re.sub(rf"@{re.escape(chart_address)}/", f"@{local_address}/", word)
        args.append(word)
    return rendered, args, env


def add_chart_acl_user(render: Render, stack: DevStack) -> None:
    """Create the chart's Redis user on every node of the stack as the Redis pods' init
    script does (``user <APP_USERNAME> on <password> <APP_RULES>``), with the password the
    chart's Secret gives it."""
    init = redis_init_env(render)
    for port in stack.topology.node_ports:
        client = stack.topology.client(port)
        try:
            client.execute_command("ACL", "SETUSER", init["APP_USERNAME"], "reset", "on",
                                   f">{stack.topology.password}", *init["APP_RULES"].split())
        finally:
            client.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter(
    renders: dict[str, Render],
    redis_server_binary: Path,
    celery_exporter_python: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exporter]:
    render = renders[CASE]
    # The workers' task events, as the chart sets them when the exporter is on.
    events = {env_of(container(render, f"platform-tasks-worker-{queue}"))
              ["PLATFORM_TASKS_TASK_EVENTS"]["value"] for queue in QUEUE_NAMES}
    assert events == {"true"}
    run_dir = tmp_path_factory.mktemp("exporter")
    with DevStack(run_dir, beat=False, gateway_fail_every=0,
                  extra_env={"PLATFORM_TASKS_TASK_EVENTS": events.pop()}) as stack:
        # The master name is not rewritten: the stack's is the chart's.
        assert stack.topology.master_name == redis_init_env(render)["MASTER_NAME"]
        add_chart_acl_user(render, stack)
        stack.wait_for_workers()

        port = free_port()
        rendered, args, env = exporter_command(render, stack, port)
        process = ManagedProcess(
            "celery-exporter", [str(celery_exporter_python), "-c", ENTRYPOINT, *args],
            # The image's environment (unbuffered Python, its venv first) under the pod's.
            {"PATH": f"{celery_exporter_python.parent}{os.pathsep}{os.environ['PATH']}",
             "PYTHONUNBUFFERED": "1", "HOME": str(run_dir), **env},
            stack.log_dir / "celery-exporter.log", cwd=run_dir,
        )
        process.start()
        try:
            running = Exporter(stack, process, rendered, args, port,
                               container(render, EXPORTER)["readinessProbe"]["httpGet"]["path"])
            # The exporter hears only the events sent after it bound its event queue: a task
            # that ends before then is never counted. A worker heartbeat seen proves it bound.
            running.eventually(
                lambda: True if value(running.scrape(), "celery_worker_up",
                                      hostname=HOSTNAME) == 1 else None,
                "a worker heartbeat heard (the exporter consuming events)")
            yield running
        finally:
            process.stop(10.0)


@pytest.fixture(scope="module")
def task_ids(exporter: Exporter) -> dict[str, str]:
    """Queue -> the id of a task that ran there to SUCCESS."""
    stack = exporter.stack
    Image.new("RGB", (64, 48), "teal").save(stack.media_root / "exporter.png")
    with TaskProducer(stack.settings()) as producer:
        ids = {queue: producer.enqueue(name, queue=queue, **call)
               for queue, (name, call) in TASKS.items()}
        for queue, task_id in ids.items():
            assert producer.wait(task_id, timeout=DEADLINE).state == "SUCCESS", queue
    return ids


# -- tests -----------------------------------------------------------------------------------


def test_only_the_sentinel_addresses_passwords_and_listen_address_differ_from_the_chart(
    exporter: Exporter,
) -> None:
    topology = exporter.stack.topology
    changed = [rendered.partition("=")[0]
               for rendered, local in zip(exporter.rendered_args, exporter.args, strict=True)
               if rendered != local]
    assert changed == ["--broker-url", "--broker-transport-option", "--host", "--port"]
    broker = exporter.args[0].removeprefix("--broker-url=").split(";")
    assert broker == [f"sentinel://platform-tasks:{topology.password}@{host}:{port}/0"
                      for host, port in topology.sentinel_addresses]
    assert ('--broker-transport-option=sentinel_kwargs={"password":'
            f'"{topology.sentinel_password}"}}') in exporter.args
    assert "--broker-transport-option=master_name=platform-tasks" in exporter.args
    assert f"--queues={','.join(sorted(QUEUE_NAMES))}" in exporter.args


def test_the_readiness_probe_reaches_the_broker(exporter: Exporter) -> None:
    def ready() -> str | None:
        status, body = exporter.get(exporter.health_path)
        return body if status == 200 else None

    body = exporter.eventually(ready, f"{exporter.health_path} answering 200")
    assert body.startswith("Connected to the broker sentinel://platform-tasks:**@")
    assert exporter.stack.topology.password not in body


def test_every_queue_has_a_length_and_its_live_workers(
    exporter: Exporter, task_ids: dict[str, str]
) -> None:
    def every_queue() -> Samples | None:
        samples = exporter.scrape()
        seen = all(value(samples, "celery_queue_length", queue_name=queue) is not None
                   and value(samples, "celery_active_worker_count", queue_name=queue)
                   == policy.worker_nodes
                   for queue, policy in QUEUES.items())
        return samples if seen else None

    samples = exporter.eventually(every_queue, "a length and a worker for every queue")
    for queue, policy in QUEUES.items():
        assert value(samples, "celery_queue_length", queue_name=queue) == 0, queue
        # It counts the pool's processes: a threads pool has none, so email and payments
        # show 0 however many threads they run; each solo worker of a group reports itself.
        processes = {"prefork": policy.concurrency, "solo": policy.worker_nodes}.get(
            policy.pool, 0)
        assert value(samples, "celery_active_process_count", queue_name=queue) == processes
    assert value(samples, "celery_worker_up", hostname=HOSTNAME) == 1


def test_each_task_is_counted_as_succeeded_on_its_queue_by_our_workers(
    exporter: Exporter, task_ids: dict[str, str]
) -> None:
    def all_succeeded() -> Samples | None:
        samples = exporter.scrape()
        done = all(value(samples, "celery_task_succeeded_total", name=name, hostname=HOSTNAME,
                         queue_name=queue)
                   for queue, (name, _) in TASKS.items())
        return samples if done else None

    samples = exporter.eventually(all_succeeded, "celery_task_succeeded_total for every task")
    for queue, (name, _) in TASKS.items():
        labels = {"name": name, "hostname": HOSTNAME, "queue_name": queue}
        assert value(samples, "celery_task_succeeded_total", **labels) == 1, queue
        assert value(samples, "celery_task_runtime_count", **labels) == 1, queue
        assert total(samples, "celery_task_failed_total", name=name) == 0, queue
        # The queue label comes from the producer's task-sent event, which the worker's
        # task-received event can overtake: that one may then be filed under "celery".
        assert total(samples, "celery_task_received_total", name=name,
                     hostname=HOSTNAME) == 1, queue
        assert value(samples, "celery_task_sent_total", **labels) == 1, queue


def test_a_task_published_without_a_sent_event_is_filed_under_queue_celery(
    exporter: Exporter, task_ids: dict[str, str]
) -> None:
    # The queue label comes from the task-sent event only. The chart turns events on in the
    # workers; a producer service (or beat) without PLATFORM_TASKS_TASK_EVENTS=true sends none.
    stack = exporter.stack
    quiet = load_settings({**stack.env, "PLATFORM_TASKS_TASK_EVENTS": "false"})
    name = "platform_tasks.default.sum_numbers"
    with TaskProducer(quiet) as producer:
        task_id = producer.enqueue(name, queue="default", kwargs={"numbers": [1, 2]})
        assert producer.wait(task_id, timeout=DEADLINE).state == "SUCCESS"

    def counted() -> Samples | None:
        samples = exporter.scrape()
        found = value(samples, "celery_task_succeeded_total", name=name, hostname=HOSTNAME,
                      queue_name="celery")
        return samples if found == 1 else None

    samples = exporter.eventually(counted, f"{name} counted as succeeded")
    assert value(samples, "celery_task_succeeded_total", name=name, hostname=HOSTNAME,
                 queue_name="default") is None


def test_the_queue_length_misses_priority_sub_lists_and_unacked_messages(
    exporter: Exporter, task_ids: dict[str, str]
) -> None:
    with TaskProducer(exporter.stack.settings()) as producer:
        # payments stops consuming (its worker stays up), so what is sent there waits.
        assert producer.app.control.cancel_consumer("payments", reply=True, timeout=5.0)
        for priority in (0, 0, 9, 9):
            producer.app.send_task("platform_tasks.default.add_numbers", args=[1, 1],
                                   queue="payments", priority=priority)
        # A countdown task is taken by the default worker at once and held unacknowledged.
        producer.enqueue("platform_tasks.default.add_numbers", queue="default", args=[1, 2],
                         countdown=120)

    def monitor_counts_all() -> Samples | None:
        samples = exporter.monitor()
        ready = [value(samples, "platform_tasks_queue_ready_messages", queue="payments",
                       priority=p) for p in ("0", "9")]
        unacked = value(samples, "platform_tasks_queue_unacked_messages", queue="default")
        return samples if ready == [2, 2] and unacked == 1 else None

    exporter.eventually(monitor_counts_all, "the monitor counting 2+2 ready and 1 unacked")

    def exporter_settled() -> Samples | None:
        samples = exporter.scrape()
        length = value(samples, "celery_queue_length", queue_name="payments")
        return samples if length == 2 else None

    samples = exporter.eventually(exporter_settled, "the exporter's payments length at 2")
    # Only the plain list counts: the two priority-9 messages wait in "payments\x06\x169".
    assert value(samples, "celery_queue_length", queue_name="payments") == 2
    # The countdown task sits in the "unacked" hash, not in the list.
    assert value(samples, "celery_queue_length", queue_name="default") == 0
    # No worker consumes payments now; -Q keeps its series all the same.
    assert value(samples, "celery_active_worker_count", queue_name="payments") == 0
